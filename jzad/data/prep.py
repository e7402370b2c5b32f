"""How decoded images become model inputs on the host: each method declares an ``ImagePrep``, the readers
apply it (``jzad.data.sources.prepare_image``)."""

from __future__ import annotations

from dataclasses import dataclass

PREP_KINDS = ("square", "square_float", "resize_crop")


@dataclass(frozen=True)
class ImagePrep:
    """How decoded images become model inputs on the host (method-specific and parity-critical).

    kind: "square" (PIL bicubic of the uint8 image straight to size x size, aspect not kept: MuSc, FSLC),
    "square_float" (the image as float32, each channel resized straight to size x size by PIL's antialiased
    bicubic on mode "F" and kept as float32 in [0, 255], not rounded: anomalib's WinCLIP transform, which
    resizes the float [0, 1] tensor; PIL agrees with torch's antialiased bicubic to 1e-5 on [0, 1]) or
    "resize_crop" (PIL bilinear resize of the shorter side to resize_to, then a centre crop of size: PatchCore).
    """

    kind: str = "square"
    resize_to: int | None = None

    def __post_init__(self):
        if self.kind not in PREP_KINDS:
            raise ValueError(f"ImagePrep.kind: expected one of {PREP_KINDS}, got {self.kind!r}")
        if self.kind == "resize_crop" and (self.resize_to is None or self.resize_to < 1):
            raise ValueError(f"ImagePrep.resize_to: 'resize_crop' needs a positive size, got {self.resize_to!r}")

    @property
    def square(self) -> bool:
        """Whether the whole image is resized straight to the model square (no crop)."""
        return self.kind != "resize_crop"

    @property
    def float_pixels(self) -> bool:
        """Whether decoded model inputs are float32 [0, 255] (else uint8)."""
        return self.kind == "square_float"

"""Pure jitted kernels: distances, tiled nearest neighbour, selection, k-center greedy, sharding."""

from jzad.kernels.distances import (
    PRECISIONS,
    dot_nt,
    l2_normalize,
    pairwise_cosine_distance,
    pairwise_euclidean,
    pairwise_sq_euclidean,
    squared_norms,
)
from jzad.kernels.kcenter import kcenter_greedy, random_projection, sharded_kcenter_greedy
from jzad.kernels.nearest import nearest_group_distance, sharded_nearest_group_distance
from jzad.kernels.select import (
    interval_bounds,
    interval_mean,
    interval_table,
    kth_smallest,
    largest_k,
    mean_of_ranks,
    smallest_k,
    sum_smallest,
)
from jzad.kernels.blur import gaussian_blur
from jzad.kernels.pool import adaptive_avg_pool1d
from jzad.kernels.resize import bilinear_matrix, resize_bilinear
from jzad.kernels.kmeans import KMeansResult, kmeans, kmeans_plusplus, lloyd
from jzad.kernels.sharding import AXIS, device_mesh, map_row_shards

__all__ = [
    "adaptive_avg_pool1d",
    "bilinear_matrix",
    "gaussian_blur",
    "resize_bilinear",
    "KMeansResult",
    "kmeans",
    "kmeans_plusplus",
    "lloyd",
    "AXIS",
    "PRECISIONS",
    "device_mesh",
    "dot_nt",
    "interval_bounds",
    "interval_mean",
    "interval_table",
    "kth_smallest",
    "kcenter_greedy",
    "l2_normalize",
    "largest_k",
    "map_row_shards",
    "mean_of_ranks",
    "nearest_group_distance",
    "pairwise_cosine_distance",
    "pairwise_euclidean",
    "pairwise_sq_euclidean",
    "random_projection",
    "sharded_kcenter_greedy",
    "sharded_nearest_group_distance",
    "smallest_k",
    "squared_norms",
    "sum_smallest",
]

"""Independent numpy reference of the 2:4 rule (SPEC section 4).

Along the prune axis the C elements are split into groups of 4 starting at index 0; the last
group is padded with zeros. In each group the 2 elements of largest |w| are kept; on equal |w|
the lower index wins, so a real element beats padding. Padding is then dropped.

Deliberately written differently from the engine (sort-based, not compare-based) so that the
two implementations check each other.
"""

import numpy as np


def mask24(w, axis):
    """Returns the 0/1 keep mask of w (same shape, same dtype as w for float inputs)."""
    w = np.asarray(w)
    if w.ndim == 0:
        raise ValueError("mask24 needs at least one dimension")
    axis = axis % w.ndim
    if np.issubdtype(w.dtype, np.floating) and np.isnan(w).any():
        raise ValueError("NaN in weight")
    moved = np.moveaxis(w, axis, -1)
    c = moved.shape[-1]
    groups = -(-c // 4)
    padded = np.zeros(moved.shape[:-1] + (groups * 4,), dtype=np.float64)
    padded[..., :c] = np.abs(moved.astype(np.float64))
    grouped = padded.reshape(moved.shape[:-1] + (groups, 4))
    # Stable sort of -|w|: equal magnitudes keep index order, so the lower index wins.
    order = np.argsort(-grouped, axis=-1, kind="stable")
    keep = np.zeros(grouped.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :2], True, axis=-1)
    keep = keep.reshape(moved.shape[:-1] + (groups * 4,))[..., :c]
    keep = np.moveaxis(keep, -1, axis)
    out_dtype = w.dtype if np.issubdtype(w.dtype, np.floating) else np.float32
    return keep.astype(out_dtype)


def is_2of4(t, axis):
    """True when every group of 4 along axis holds at most 2 non-zeros (-0 counts as zero)."""
    t = np.asarray(t)
    axis = axis % t.ndim
    moved = np.moveaxis(t, axis, -1)
    c = moved.shape[-1]
    groups = -(-c // 4)
    nz = np.zeros(moved.shape[:-1] + (groups * 4,), dtype=np.int64)
    nz[..., :c] = (moved != 0)
    per_group = nz.reshape(moved.shape[:-1] + (groups, 4)).sum(axis=-1)
    return bool((per_group <= 2).all())


def apply24(w, axis):
    """w * mask24(w, axis), in w's dtype."""
    w = np.asarray(w)
    return w * mask24(w, axis).astype(w.dtype)


def _self_check():
    # C=3 zeroes one element, C=5 keeps the fifth; ties go to the lower index.
    assert mask24(np.array([1.0, 3.0, 2.0]), 0).tolist() == [0, 1, 1]
    assert mask24(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 0).tolist() == [0, 0, 1, 1, 1]
    assert mask24(np.array([1.0, 1.0, 1.0, 1.0]), 0).tolist() == [1, 1, 0, 0]
    assert mask24(np.array([0.0, 0.0, 0.0]), 0).tolist() == [1, 1, 0]
    assert mask24(np.array([-0.0, 0.0, 0.0, 5.0]), 0).tolist() == [1, 0, 0, 1]
    assert mask24(np.array([-2.0, 2.0, 1.0, -2.0]), 0).tolist() == [1, 1, 0, 0]
    assert mask24(np.array([0.0, 0.0, 0.0, 3.0, 1.0, 0.0, 0.0]), 0).tolist() == [1, 0, 0, 1, 1, 1, 0]
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    m = mask24(w, 2)
    assert m.shape == w.shape and m.dtype == np.float32
    assert m[0, 0].tolist() == [0, 0, 1, 1]
    assert is_2of4(apply24(np.random.RandomState(0).randn(3, 7, 5), 1), 1)
    assert not is_2of4(np.ones((4, 2)), 0)


_self_check()

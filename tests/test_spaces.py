"""Space: sampling respects shape, dtype and bounds; plain-data round trip."""

import numpy as np

from dreamer_rodent.spaces import Space


def test_sample_shapes_dtypes_and_bounds():
    rng = np.random.default_rng(0)
    cases = [
        Space((), np.float32),  # a scalar such as `reward`
        Space((3,), np.float32, -1, 1),
        Space((4, 4, 3), np.uint8, 0, 255),
        Space((), bool),
        Space((2,), np.int32, 0, 5),
    ]
    for space in cases:
        for _ in range(20):
            value = space.sample(rng)
            assert space.contains(value), (space, value)
            assert isinstance(value, np.ndarray) and value.dtype == space.dtype


def test_contains_rejects_wrong_shape_dtype_and_bounds():
    space = Space((2,), np.float32, -1, 1)
    assert not space.contains(np.zeros(3, np.float32))
    assert not space.contains(np.zeros(2, np.float64))
    assert not space.contains(np.array([0.0, 1.5], np.float32))


def test_plain_data_round_trip():
    for space in [Space((3,), np.float32, -1, 1), Space((), bool), Space((2,), np.float32, [0, -2], [1, 2])]:
        again = Space.from_dict(space.to_dict())
        assert again.shape == space.shape and again.dtype == space.dtype
        np.testing.assert_array_equal(again.low, space.low)
        np.testing.assert_array_equal(again.high, space.high)

"""Video composition and MP4 writing: the inset lands where asked, text shows, files read back."""

import imageio.v2 as imageio
import numpy as np
import pytest

from dreamer_rodent import video


def _frame(height=120, width=160, value=40):
    return np.full((height, width, 3), value, np.uint8)


def test_inset_lands_in_requested_corner_with_border_and_nearest_upscale():
    frame = _frame()
    inset = np.zeros((8, 8, 3), np.uint8)
    inset[:4, :, 0] = 200  # top half red, bottom half blue: shows orientation survives
    inset[4:, :, 2] = 200
    out = video.add_inset(frame, inset, corner="top-right", fraction=0.5, border=2, margin=6)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.array_equal(frame, _frame())  # the input is untouched
    # Largest integer factor with 8 * f + 4 <= 60: f = 7 -> 56 px, boxed 60 px.
    changed = np.argwhere(np.any(out != frame, axis=-1))
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    assert (y0, x1) == (6, 160 - 6 - 1)  # margin from the top and right edges
    assert (y1 - y0 + 1, x1 - x0 + 1) == (60, 60)
    assert np.all(out[y0, x0:x1 + 1] == 255)  # border row
    body = out[y0 + 2 : y1 - 1, x0 + 2 : x1 - 1]
    assert body.shape[:2] == (56, 56)
    assert np.all(body[:28, :, 0] == 200) and np.all(body[28:, :, 2] == 200)  # nearest, not blurred
    assert np.all(out[:, : x0] == 40) and np.all(out[y1 + 1 :] == 40)  # nothing outside the box


@pytest.mark.parametrize("corner", ["top-left", "bottom-left", "bottom-right"])
def test_inset_other_corners(corner):
    out = video.add_inset(_frame(), np.zeros((10, 10, 3), np.uint8), corner=corner, margin=4)
    changed = np.argwhere(np.any(out != 40, axis=-1))
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    assert (y0 == 4) == corner.startswith("top") and (y1 == 120 - 5) == corner.startswith("bottom")
    assert (x0 == 4) == corner.endswith("left") and (x1 == 160 - 5) == corner.endswith("right")


def test_inset_errors_name_the_fix():
    with pytest.raises(video.VideoError, match="corner"):
        video.add_inset(_frame(), np.zeros((4, 4, 3), np.uint8), corner="middle")
    with pytest.raises(video.VideoError, match="larger video size"):
        video.add_inset(_frame(20, 20), np.zeros((30, 30, 3), np.uint8))


def test_text_overlay_changes_pixels_only_in_its_corner():
    frame = _frame(96, 128, value=120)
    out = video.draw_text(frame, ["episode 1/3", "return 12.5"], corner="top-left")
    changed = np.any(out != frame, axis=-1)
    assert changed.sum() > 200
    ys, xs = np.nonzero(changed)
    assert ys.max() < 48 and xs.min() == 0  # top-left box, not the whole frame
    assert not changed[60:].any()
    assert out.max() > 200  # white glyphs drawn over the shaded box
    # Different text gives different pixels: the numbers are really written.
    other = video.draw_text(frame, ["episode 2/3", "return 99.0"], corner="top-left")
    assert not np.array_equal(out, other)


def test_make_even_pads_odd_sizes_and_parse_size():
    frame = np.arange(7 * 5 * 3, dtype=np.uint8).reshape(7, 5, 3)
    out = video.make_even(frame)
    assert out.shape == (8, 6, 3)
    assert np.array_equal(out[:7, :5], frame) and np.array_equal(out[7, :5], frame[6])
    assert video.parse_size("641x479") == (642, 480)
    assert video.parse_size("320X240") == (320, 240)
    with pytest.raises(video.VideoError, match="WIDTHxHEIGHT"):
        video.parse_size("640")
    with pytest.raises(video.VideoError, match="too small"):
        video.parse_size("8x8")


def test_mp4_round_trip_frame_count_size_and_even_padding(tmp_path):
    path = tmp_path / "sub" / "clip.mp4"
    frames = [np.full((45, 61, 3), 10 * i, np.uint8) for i in range(12)]
    assert video.write_video(path, frames, fps=50) == 12
    reader = imageio.get_reader(str(path))
    try:
        assert reader.count_frames() == 12
        assert reader.get_meta_data()["fps"] == pytest.approx(50)
        first, last = reader.get_data(0), reader.get_data(11)
    finally:
        reader.close()
    assert first.shape == (46, 62, 3)  # odd 61x45 padded to even 62x46
    assert abs(int(last.mean()) - 110) <= 3 and abs(int(first.mean())) <= 3  # content, in order


def test_writer_rejects_size_changes_and_empty_videos(tmp_path):
    with video.VideoWriter(tmp_path / "a.mp4", fps=25) as writer:
        writer.append(_frame(32, 32))
        with pytest.raises(video.VideoError, match="same size"):
            writer.append(_frame(64, 64))
    with pytest.raises(video.VideoError, match="no frames"):
        video.write_video(tmp_path / "b.mp4", [], fps=25)
    with pytest.raises(video.VideoError, match="fps"):
        video.VideoWriter(tmp_path / "c.mp4", fps=0)


def test_label_columns_and_stack_rows():
    videos = np.zeros((2, 3, 8, 24, 3), np.uint8)
    videos[1] = 255
    stacked = video.stack_rows(videos, gap=2)
    assert stacked.shape == (3, 18, 24, 3)
    assert np.all(stacked[:, :8] == 0) and np.all(stacked[:, 10:] == 255)
    labelled = video.label_columns(stacked[0], ["truth", "model", "error"], size=9)
    assert labelled.shape[1] == 24 and labelled.shape[0] > 18 and labelled.shape[0] % 2 == 0
    assert labelled[: labelled.shape[0] - 18].max() > 0  # the header has text
    with pytest.raises(video.VideoError, match=r"\[B, T, H, W, C\]"):
        video.stack_rows(np.zeros((3, 8, 8, 3)))


def test_ffmpeg_starts_without_python_in_the_forked_child(tmp_path):
    """imageio-ffmpeg's preexec_fn ran Python between fork and exec: in a process with JAX's threads a deadlock
    risk, which JAX reported as 'os.fork() was called' in the eval and video tests."""
    import warnings

    import imageio_ffmpeg._io
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # JAX's threads and its at-fork warning are up
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert video.write_video(tmp_path / "a.mp4", [_frame(32, 32)] * 3, fps=25) == 3
        reader = imageio.get_reader(str(tmp_path / "a.mp4"))  # imageio's own reader starts ffmpeg the same way
        try:
            assert reader.get_data(2).shape == (32, 32, 3)
        finally:
            reader.close()
    assert not [w for w in caught if "os.fork() was called" in str(w.message)]
    options = imageio_ffmpeg._io._popen_kwargs(prevent_sigint=True)
    # Still its own process group (Ctrl-C stays with the parent), set up in C with no Python in the child.
    assert options["preexec_fn"] is None and (options.get("process_group") == 0 or options.get("start_new_session"))

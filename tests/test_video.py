"""lot_rl.video: H.264 files browsers play (codec, pixel format, sizes, frame counts, pictures), the episode
recorder of eval and training, CleanRL's schedule, the GIF TensorBoard shows."""

import imageio_ffmpeg
import numpy as np
import pytest

from lot_rl.video import (EpisodeRecorder, VideoWriter, capped_cubic, even_size, gif_bytes, probe,
                          training_schedule)


def coloured_frames(count: int, height: int, width: int) -> list[np.ndarray]:
    """Frames of flat colour blocks (pure red top-left quarter, a moving green bar): easy to compare after H.264."""
    frames = []
    for k in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[: height // 2, : width // 2] = (255, 0, 0)
        frame[:, (4 * k) % width: (4 * k) % width + 4] = (0, 255, 0)
        frames.append(frame)
    return frames


def decoded_frames(path) -> list[np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    return [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]


def test_the_writer_makes_h264_yuv420p_mp4_of_every_frame(tmp_path):
    frames = coloured_frames(9, 64, 48)
    with VideoWriter(tmp_path / "sub" / "a.mp4", fps=15) as video:  # the folder is made
        for frame in frames:
            video.append(frame)
    path = tmp_path / "sub" / "a.mp4"
    info = probe(path)
    assert (info.codec, info.pixel_format, info.width, info.height, info.frames, info.fps) == \
        ("h264", "yuv420p", 48, 64, 9, 15.0)
    assert b"avc1" in path.read_bytes()[:4096] and b"ftyp" in path.read_bytes()[:16]  # the MP4 H.264 sample entry
    # The pictures come back (RGB order kept: red stays red), up to H.264's small losses.
    decoded = decoded_frames(path)
    for original, picture in zip(frames, decoded):
        assert np.abs(original.astype(int) - picture.astype(int)).mean() < 4
    assert decoded[0][5, 12].tolist() == pytest.approx([255, 0, 0], abs=12)
    assert decoded[0][5, 1].tolist() == pytest.approx([0, 255, 0], abs=12)


def test_odd_sizes_and_grayscale_frames_become_even_rgb(tmp_path):
    gray = np.full((21, 33), 200, np.uint8)
    padded = even_size(gray)
    assert padded.shape == (22, 34, 3) and (padded[:21, :33] == 200).all() and (padded[21] == 0).all()
    assert (padded[:, 33] == 0).all()
    with VideoWriter(tmp_path / "g.mp4", fps=10) as video:
        for _ in range(3):
            video.append(gray)
    info = probe(tmp_path / "g.mp4")
    assert (info.width, info.height, info.frames, info.codec) == (34, 22, 3, "h264")
    with pytest.raises(ValueError, match="frame of 10x10 after frames of 34x22"):
        with VideoWriter(tmp_path / "h.mp4", fps=10) as video:
            video.append(gray)
            video.append(np.zeros((10, 10, 3), np.uint8))
    assert VideoWriter(tmp_path / "none.mp4", fps=10).close() is None and not (tmp_path / "none.mp4").exists()


def test_the_recorder_keeps_the_chosen_games_one_picture_per_step(tmp_path):
    """Game k lasts k + 2 steps; games 0 and 2 are chosen. Same-step autoreset: the picture after a game's last
    step is the next game's first, so a game of n steps has n pictures; a game in progress is saved by close()."""
    saved = []
    recorder = EpisodeRecorder(tmp_path, fps=10, name_of=lambda k: f"game{k}.mp4" if k in (0, 2, 4) else None,
                               on_saved=lambda path, k: saved.append((path.name, k)))
    asked = []

    def picture():
        asked.append(recorder.games_done)
        return np.full((8, 8, 3), 40 * recorder.games_done, np.uint8)

    recorder.start_game(picture)
    for game in range(4):
        for step in range(game + 2):
            recorder.step(picture, game_over=step == game + 1)
    recorder.step(picture, game_over=False)  # game 4 has one step so far, then training stops
    recorder.close()
    assert saved == [("game0.mp4", 0), ("game2.mp4", 2), ("game4.mp4", 4)]
    assert [probe(tmp_path / name).frames for name, _ in saved] == [2, 4, 2]
    assert set(asked) == {0, 2, 4}  # no picture is drawn for a game that is not recorded
    assert recorder.paths == [str(tmp_path / name) for name, _ in saved] and recorder.games_done == 4


def test_cleanrl_schedule_and_every_nth_game():
    assert [k for k in range(3001) if capped_cubic(k)] == [0, 1, 8, 27, 64, 125, 216, 343, 512, 729, 1000, 2000,
                                                           3000]
    names = training_schedule(0)
    assert [names(k) for k in (0, 1, 2, 8)] == ["episode-00000.mp4", "episode-00001.mp4", None, "episode-00008.mp4"]
    every_third = training_schedule(3)
    assert [k for k in range(10) if every_third(k)] == [0, 3, 6, 9]


def test_gif_for_tensorboard_has_every_frame_at_the_video_size(tmp_path):
    with VideoWriter(tmp_path / "a.mp4", fps=10) as video:
        for frame in coloured_frames(6, 32, 40):
            video.append(frame)
    gif = gif_bytes(tmp_path / "a.mp4")
    assert gif[:6] == b"GIF89a"
    assert (int.from_bytes(gif[6:8], "little"), int.from_bytes(gif[8:10], "little")) == (40, 32)
    (tmp_path / "a.gif").write_bytes(gif)
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "a.gif"))[0] == 6
    with pytest.raises(RuntimeError, match="could not turn"):
        gif_bytes(tmp_path / "missing.mp4")

"""Videos that browsers, TensorBoard and W&B play: the one writer of ``lot-rl eval --video`` and ``--capture-video``.

Every video lot_rl writes is an MP4 of H.264 in yuv420p, the format every browser's player (and so W&B's) plays,
encoded by the ffmpeg binary that the ``imageio-ffmpeg`` wheel ships (nothing to install on the system). A
picture with an odd width or height gets one black row or column, as yuv420p needs even sizes.

- :class:`VideoWriter`: frames in, one MP4 out.
- :class:`EpisodeRecorder`: the games of one env, each recorded game to its own file; which games, and their
  names, come from a function of the game's index (``lot-rl eval``: its first games; training:
  :func:`training_schedule`, CleanRL's :func:`capped_cubic` or every N-th game).
- :func:`probe` reads a video's codec, size and frame count back; :func:`gif_bytes` turns a video into the
  animated GIF that TensorBoard's image dashboard plays.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lot_rl.errors import LoTUserError

# x264's constant-quality mode; 18 keeps the sharp edges of game pictures (files stay small: flat colours).
CRF = 18


def _ffmpeg() -> Any:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise LoTUserError("videos need the imageio-ffmpeg package (a dependency of lot_rl): "
                           "pip install imageio-ffmpeg") from None
    return imageio_ffmpeg


def even_size(frame: np.ndarray) -> np.ndarray:
    """``frame`` as an RGB ``(H, W, 3)`` uint8 array of even height and width (a grayscale ``(H, W)`` frame is
    repeated into three channels; an odd size gets one black row or column at the bottom or right)."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"a video frame is (H, W, 3) RGB or (H, W) grayscale, got shape {frame.shape}")
    height, width = frame.shape[:2]
    if height % 2 or width % 2:
        frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)))
    return np.ascontiguousarray(frame, dtype=np.uint8)


class VideoWriter:
    """An H.264 MP4 file written frame by frame; the size is the first frame's.

    ``with VideoWriter(path, fps=15) as video: video.append(frame)``. Frames are piped to an ffmpeg process
    (one encoder thread: training keeps the cores).
    """

    def __init__(self, path: str | Path, fps: int):
        self.path, self.fps = Path(path), fps
        self.frames = 0
        self._size: tuple[int, int] | None = None
        self._pipe = None

    def append(self, frame: np.ndarray) -> None:
        """Add one RGB ``(H, W, 3)`` or grayscale ``(H, W)`` uint8 frame."""
        frame = even_size(frame)
        size = (frame.shape[1], frame.shape[0])
        if self._pipe is None:
            self._size = size
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._pipe = _ffmpeg().write_frames(
                str(self.path), size, fps=self.fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
                quality=None, macro_block_size=1, ffmpeg_log_level="error",
                output_params=["-crf", str(CRF), "-threads", "1", "-movflags", "+faststart"])
            try:
                self._pipe.send(None)  # starts ffmpeg
            except (OSError, RuntimeError) as exc:
                raise LoTUserError(f"cannot write video {self.path}: {str(exc).splitlines()[0]}") from exc
        elif size != self._size:
            raise ValueError(f"video {self.path}: frame of {size[0]}x{size[1]} after frames of "
                             f"{self._size[0]}x{self._size[1]}")
        self._pipe.send(frame)
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file; return its path (None if no frame was written, and then no file exists)."""
        if self._pipe is None:
            return None
        self._pipe.close()
        self._pipe = None
        return self.path

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class EpisodeRecorder:
    """Records chosen games of one env of a vector env, one MP4 per game.

    ``name_of(k)`` is the file name of the env's game ``k`` (counted from 0), or None to skip that game. Call
    :meth:`start_game` with the first picture of a game (after a reset), then :meth:`step` after each vector
    step. Pictures are asked for (``picture()``) only while a game is being recorded. ``on_saved(path, k)`` is
    called with each finished file; :meth:`close` saves a game in progress as far as it went.
    """

    def __init__(self, folder: str | Path, fps: int, name_of: Callable[[int], str | None], *, games_done: int = 0,
                 on_saved: Callable[[Path, int], None] | None = None):
        self.folder, self.fps, self.name_of, self.on_saved = Path(folder), fps, name_of, on_saved
        self.games_done = games_done  # index of the game being played
        self.paths: list[str] = []
        self._video: VideoWriter | None = None

    @property
    def recording(self) -> bool:
        return self._video is not None

    def start_game(self, picture: Callable[[], np.ndarray]) -> None:
        """A game starts now (index :attr:`games_done`): record it if ``name_of`` names it."""
        name = self.name_of(self.games_done)
        if name is None:
            return
        self._video = VideoWriter(self.folder / name, self.fps)
        self._video.append(picture())

    def step(self, picture: Callable[[], np.ndarray], game_over: bool) -> None:
        """After a vector step. With same-step autoreset, the env already shows the next game when its game is
        over, so a recorded game holds one picture per step it lasted (its first picture, then one after each
        step but the last)."""
        if not game_over:
            if self._video is not None:
                self._video.append(picture())
            return
        self._finish()
        self.games_done += 1
        self.start_game(picture)

    def _finish(self) -> None:
        if self._video is None:
            return
        path, game = self._video.close(), self.games_done
        self._video = None
        if path is not None:
            self.paths.append(str(path))
            if self.on_saved is not None:
                self.on_saved(path, game)

    def close(self) -> None:
        """Save the game being recorded, as far as it went."""
        self._finish()


def capped_cubic(game: int) -> bool:
    """CleanRL's video schedule (gymnasium's ``RecordVideo`` default): games 0, 1, 8, 27, ... (the cubes) below
    1000, then every 1000th."""
    if game >= 1000:
        return game % 1000 == 0
    root = round(game ** (1 / 3))
    return root ** 3 == game


def training_schedule(every: int = 0) -> Callable[[int], str | None]:
    """The file names of ``--capture-video``: game ``k`` of env 0 is ``episode-<k>.mp4`` if it is one of every
    ``every``-th game (0, every, 2 every, ...), or with ``every`` 0 one of :func:`capped_cubic`'s; else None."""
    recorded = capped_cubic if every == 0 else (lambda game: game % every == 0)
    return lambda game: f"episode-{game:05d}.mp4" if recorded(game) else None


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` reads back from a video file."""

    codec: str  # "h264"
    pixel_format: str  # "yuv420p"
    width: int
    height: int
    fps: float
    frames: int


def probe(path: str | Path) -> VideoInfo:
    """Codec, pixel format, size, frame rate and frame count of a video file (decoded by ffmpeg)."""
    reader = _ffmpeg().read_frames(str(path))
    meta = next(reader)
    frames = sum(1 for _ in reader)
    width, height = meta["size"]
    return VideoInfo(codec=meta["codec"], pixel_format=meta["pix_fmt"].split("(")[0], width=width, height=height,
                     fps=float(meta["fps"]), frames=frames)


def gif_bytes(path: str | Path) -> bytes:
    """The video as an animated GIF (one palette made for the whole video), what TensorBoard's image dashboard
    plays: ``SummaryWriter.add_video`` writes the same, but needs moviepy."""
    command = [_ffmpeg().get_ffmpeg_exe(), "-v", "error", "-i", str(path),
               "-filter_complex", "split[a][b];[a]palettegen[p];[b][p]paletteuse", "-f", "gif", "-"]
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0 or not done.stdout.startswith(b"GIF8"):
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"ffmpeg could not turn {path} into a GIF: {message[-1] if message else done.returncode}")
    return done.stdout

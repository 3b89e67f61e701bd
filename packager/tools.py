"""Finding the ffmpeg/ffprobe binaries: PATH first, then the imageio-ffmpeg wheel."""

from __future__ import annotations

import functools
import shutil
import subprocess


class ToolMissing(RuntimeError):
    pass


@functools.cache
def ffmpeg() -> str:
    """Path of the ffmpeg binary used for transcoding."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception as exc:  # noqa: BLE001 - imageio-ffmpeg raises RuntimeError (or worse) when it has no binary
        raise ToolMissing(f"no ffmpeg on PATH and none from imageio-ffmpeg ({exc}); install ffmpeg") from None


@functools.cache
def ffprobe() -> str | None:
    """Path of ffprobe, or None (the imageio-ffmpeg wheel ships only ffmpeg)."""
    return shutil.which("ffprobe")


@functools.cache
def describe() -> str:
    """One line naming the ffmpeg in use and its version, for --verbose."""
    exe = ffmpeg()
    out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True, check=False).stdout
    version = out.split("\n", 1)[0].removeprefix("ffmpeg version ").split(" ")[0] or "unknown version"
    origin = "PATH" if shutil.which("ffmpeg") == exe else "imageio-ffmpeg wheel"
    return f"ffmpeg {version} at {exe} (from {origin})"

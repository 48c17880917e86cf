"""A user's own video: decode frames and sound (PyAV), segment them window by window, write the
overlay video and masks. `flows/segment.py` is the command around it."""

from auralsam2.video.decode import (
    FRAME_PHASE,
    AudioStream,
    SampledFrame,
    VideoError,
    VideoInfo,
    probe_video,
    sample_frames,
)
from auralsam2.video.encode import OverlayWriter, overlay_frame, write_frames_video, write_mask_png
from auralsam2.video.segment import SegmentSettings, WindowResult, segment_windows

__all__ = ["FRAME_PHASE", "AudioStream", "OverlayWriter", "SampledFrame", "SegmentSettings", "VideoError",
           "VideoInfo", "WindowResult", "overlay_frame", "probe_video", "sample_frames", "segment_windows",
           "write_frames_video", "write_mask_png"]

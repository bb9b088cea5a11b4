"""An agent on disk is tensors, JSON and npz: reading one a user was handed never runs code."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from uniprune.agent import AMCDDPG, load_agent, save_agent
from uniprune.compressors.core.errors import RunDirError
from uniprune.envs import make_tiny_env

MARK = "uniprune-test-payload-ran"


class _Payload:
    """Unpickling this calls print(MARK): proof that a loader ran code from the file."""

    def __reduce__(self):
        return (print, (MARK,))


@pytest.fixture()
def saved(tmp_path):
    env = make_tiny_env()
    agent = AMCDDPG(env=env, warmup_episodes=1, seed=0, batch_size=4)
    agent.learn(total_timesteps=2 * env.num_layers)
    save_agent(agent, tmp_path)
    return tmp_path, agent


def test_agent_round_trips_without_an_env(saved):
    folder, agent = saved
    loaded = load_agent(folder)  # only to act, as replay does
    obs, _ = make_tiny_env().reset(seed=1)
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], agent.predict(obs, deterministic=True)[0])
    assert loaded.episode == agent.episode == 2 and loaded.settings == agent.settings


def test_pickled_payloads_are_refused_and_never_run(saved, capsys):
    folder, _ = saved
    # an SB3-style zip whose data is a pickle
    zpath = folder / "agent.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("data", pickle.dumps(_Payload()))
    with pytest.raises(RunDirError, match="pickled code"):
        load_agent(zpath)
    # agent.pt replaced by a pickle of code
    (folder / "agent.pt").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(RunDirError, match="cannot be read safely"):
        load_agent(folder)
    assert MARK not in capsys.readouterr().out


def test_replay_buffer_with_objects_is_refused(saved, capsys):
    folder, _ = saved
    buf = io.BytesIO()
    np.savez(buf, meta=np.zeros(4), observations=np.array([_Payload()], dtype=object))
    (folder / "replay_buffer.npz").write_bytes(buf.getvalue())
    with pytest.raises(RunDirError, match="replay_buffer.npz cannot be read"):
        load_agent(folder, env=make_tiny_env(), replay_buffer=True)
    assert MARK not in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["format", "space", "truncated", "missing"])
def test_damaged_agent_files_are_one_line_errors(saved, damage):
    folder, _ = saved
    record = json.loads((folder / "agent.json").read_text())
    if damage == "format":
        record["format"] = "sb3"
        (folder / "agent.json").write_text(json.dumps(record))
    elif damage == "space":
        record["observation_space"]["shape"] = ["x"]
        (folder / "agent.json").write_text(json.dumps(record))
    elif damage == "truncated":
        data = (folder / "agent.pt").read_bytes()
        (folder / "agent.pt").write_bytes(data[: len(data) // 2])
    else:
        (folder / "agent.pt").unlink()
    with pytest.raises(RunDirError) as exc:
        load_agent(folder)
    assert len(str(exc.value).splitlines()) == 1


def test_non_finite_agent_is_not_saved(tmp_path):
    agent = AMCDDPG(env=make_tiny_env(), warmup_episodes=1, seed=0)
    with torch.no_grad():
        next(agent.policy.parameters()).fill_(float("nan"))
    with pytest.raises(RunDirError, match="non-finite"):
        save_agent(agent, tmp_path)
    assert not list(tmp_path.iterdir())

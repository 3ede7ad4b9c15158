"""``--executor ray``: the parts of a merge as Ray tasks on a local cluster; a lost worker's retry writes the same bytes."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import pytest

from wsa_cli.merge.executor import merge_recipe
from wsa_cli.merge.parts import Split

pytestmark = [pytest.mark.ray, pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra")]


def _load():  # noqa: ANN202 - the model builders of test_merge_parts (one place for the test models)
    import importlib.util as u

    spec = u.spec_from_file_location("_wsa_test_merge_parts", Path(__file__).with_name("test_merge_parts.py"))
    mod = u.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ray_cluster():  # noqa: ANN201
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_three_parts_on_ray_with_one_worker_killed_match_the_single_process_merge(tmp_path: Path, ray_cluster) -> None:  # noqa: ANN001
    h = _load()
    h.make_models(tmp_path, layers=24, width=1024, base=True)  # 4 MB per weight, 8 per part: a part runs long enough to be killed
    h.write_recipe(tmp_path, method="ties", base=True, shard=34_000_000)
    merge_recipe(tmp_path / "r.yaml")
    ref = h.tree(tmp_path / "out")
    os.rename(tmp_path / "out", tmp_path / "out.single")
    killed: list[int] = []
    labels: list[str] = []

    def progress(n: int, label: str = "") -> None:  # streamed back from the workers
        labels.append(label)
        if not killed and label.startswith("part 2/3"):  # its first report: the part has just started
            pid = int(label.split(" pid ")[1].split()[0])
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)  # the worker of part 2 dies mid-part, once

    res = merge_recipe(tmp_path / "r.yaml", split=Split(parts=3, executor="ray"), progress=progress)
    ran = {r["part"]: r for r in res.final["ray"]}
    assert killed and ran[2]["starts"] >= 2, "the killed part was not retried"
    assert ran[2]["pid"] != killed[0]
    assert sorted(ran) == [1, 2, 3] and all(not r["skipped"] for r in ran.values())
    assert all(r["memory"] > 2 * 3 * (4 << 20) for r in ran.values())  # memory= from the prediction: 2 keys x (2 models + base) mapped
    assert any(lbl.startswith("part 1/3") for lbl in labels) and any(lbl.startswith("part 3/3") for lbl in labels)
    assert h.tree(tmp_path / "out") == ref
    assert not (tmp_path / "out.wsa-parts").exists()


def test_a_node_that_cannot_see_an_input_is_named(tmp_path: Path, ray_cluster) -> None:  # noqa: ANN001
    from wsa_cli.merge.ray_executor import _check_node

    bad = _check_node([(str(tmp_path / "nowhere.safetensors"), 10)], str(tmp_path))
    assert bad and "nowhere.safetensors" in bad[0]
    f = tmp_path / "a.bin"
    f.write_bytes(b"1234")
    assert "4 bytes there, 5 here" in _check_node([(str(f), 5)], str(tmp_path))[0]
    assert _check_node([(str(f), 4)], str(tmp_path)) == []


def test_a_wsa_error_in_a_part_comes_back_as_itself(ray_cluster) -> None:  # noqa: ANN001
    from wsa_cli.errors import OutputError
    from wsa_cli.merge.ray_executor import _result

    def failing_part() -> None:
        raise OutputError("cannot write the output (No space left on device)", path="/data/out.wsa-parts")

    ref = ray_cluster.remote(failing_part).remote()
    with pytest.raises(OutputError, match="No space left"):  # its message and exit code, not a Ray traceback
        _result(ray_cluster, ref, 2, 3)

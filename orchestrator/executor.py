"""Where stage tasks run: in this process (local) or on a Ray cluster (ray).

The driver (orchestrator.driver.run_all) submits plain functions as tasks (one per entry, one per
accuracy shard) and waits for whichever finishes first; it never knows where a task ran. A
task gets `say` for its progress lines: printed at once when it runs here, returned with its
result when it runs on a cluster (so one entry's lines are never interleaved with another's).

- LocalExecutor runs a task when the driver waits for it, lowest priority first: an entry's
  shards run before the next entry starts, which is exactly the order of a plain local run.
- RayExecutor uses Ray (https://docs.ray.io) as the scheduler: embedded (a local instance
  started here) without an address, else the cluster at --ray-address / RAY_ADDRESS. A task
  asks for its CPU threads and for two custom resources that a node advertises only when it
  can run it the same way as here: `env:<env>:<lock sha>` (the source's environment, built
  from this checkout's lock file) and `code:<code sha>` (this checkout's pipeline code). Ray
  retries a task whose worker process or node died (max_retries); a task's own error is not
  retried. Nothing here reads or writes a shared directory: arguments and results travel
  through Ray's object store.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from converters.protocol import PipelineError
from converters.registry import REPO_ROOT, SOURCES, unavailable_reason
from orchestrator.fingerprint import code_resource, env_resource

TASK_RETRIES = 3   # a task whose process or node dies is rerun elsewhere this many times


@dataclass
class Outcome:
    """A finished task: its value or its error, and the lines it said."""
    handle: Any
    value: Any = None
    error: BaseException | None = None
    lines: list[str] = field(default_factory=list)


class Reporter:
    """Progress events of a run, shown on the terminal (as Open Model Zoo's emit_event).

    Events: `line` (text), `plan` (entries), `entry_done` (status), `shards_planned` (count),
    `shard_done` (images). With `bar`, one line at the bottom counts entries, shards and
    images/s across the cluster while task lines scroll above it."""

    def __init__(self, echo: Callable[[str], None] = print, bar: bool = False):
        self.echo = echo
        self.entries_total = self.entries_done = 0
        self.shards_total = self.shards_done = 0
        self.images = 0
        self._bar = tqdm(total=None, bar_format="{desc}", disable=None, leave=False,
                         dynamic_ncols=True) if bar else None
        self._start = None

    def emit_event(self, kind: str, **fields) -> None:
        if self._start is None:
            self._start = time.perf_counter()
        if kind == "line":
            if self._bar is not None and not self._bar.disable:
                self._bar.clear()
                self.echo(fields["text"])
                self._bar.refresh()
            else:
                self.echo(fields["text"])
            return
        if kind == "plan":
            self.entries_total = fields["entries"]
        elif kind == "entry_done":
            self.entries_done += 1
        elif kind == "shards_planned":
            self.shards_total += fields["count"]
        elif kind == "shard_done":
            self.shards_done += 1
            self.images += fields["images"]
        if self._bar is not None:
            elapsed = max(time.perf_counter() - self._start, 1e-9)
            self._bar.set_description_str(
                f"entries {self.entries_done}/{self.entries_total} | shards "
                f"{self.shards_done}/{self.shards_total} | {self.images} images, "
                f"{self.images / elapsed:.1f} images/s")

    def say(self, text: str) -> None:
        self.emit_event("line", text=text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Executor:
    """Interface: submit(fn, *args, env=, cpus=, priority=, label=, **kwargs) -> handle;
    wait_any(handles) -> Outcome; put(data) -> what a task receives as that data (bytes,
    or a file's path where shares_files);
    unavailable(source) -> reason or None; on_each_node(fn, *args) -> [(node, value)];
    cancel(handles); close(). `shares_files`: tasks run in the driver's process, so a file
    a task leaves in a folder the driver names is the driver's without a copy."""

    name = "?"
    shares_files = False

    def where(self) -> str:
        return self.name

    def unavailable(self, source: str) -> str | None:
        raise NotImplementedError

    def put(self, data: bytes | Path):
        return data

    def ship_file(self, path):
        """What a task receives to get a file that is only on this machine (None: tasks run
        here and read it in place)."""
        return None

    def submit(self, fn: Callable, *args, env: str | None, cpus: int, priority: tuple,
               label: str, **kwargs):
        raise NotImplementedError

    def wait_any(self, handles) -> Outcome:
        raise NotImplementedError

    def on_each_node(self, fn: Callable, *args) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def cancel(self, handles) -> None:
        pass

    def close(self) -> None:
        pass


class LocalExecutor(Executor):
    """Tasks run in this process, one at a time, lowest priority first."""

    name = "local"
    shares_files = True

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self._tasks: dict[int, tuple] = {}
        self._next = 0

    def unavailable(self, source: str) -> str | None:
        return unavailable_reason(SOURCES[source])

    def submit(self, fn, *args, env, cpus, priority, label, **kwargs):
        self._next += 1
        self._tasks[self._next] = (priority, fn, args, kwargs)
        return self._next

    def wait_any(self, handles) -> Outcome:
        handle = min(handles, key=lambda h: self._tasks[h][0])
        _, fn, args, kwargs = self._tasks.pop(handle)
        try:
            return Outcome(handle, fn(*args, say=self.reporter.say, **kwargs))
        except Exception as exc:  # noqa: BLE001 - reported as the task's failure
            return Outcome(handle, error=exc)

    def on_each_node(self, fn, *args):
        return [("this machine", fn(*args))]

    def cancel(self, handles) -> None:
        for handle in handles:
            self._tasks.pop(handle, None)


def _call(fn, *args, **kwargs):
    """Body of every Ray task: run fn, keep the lines it says for the driver to print.
    (Arguments stay top-level: Ray resolves ObjectRefs only there.)"""
    lines: list[str] = []
    return fn(*args, say=lines.append, **kwargs), lines


def node_resources() -> dict[str, float]:
    """What this machine offers as a Ray node: each environment built from this checkout's
    lock (the stamp scripts/setup_env.sh writes), and this checkout's code. Counts are large:
    CPUs, not these, limit how many tasks run at once."""
    from converters.registry import venv_root
    from orchestrator.fingerprint import lock_digest

    offered = {code_resource(): 10000.0}
    for env in sorted({spec.env for spec in SOURCES.values()}):
        stamp = venv_root() / env / ".lock-sha256"
        built = stamp.is_file() and stamp.read_text().strip() == lock_digest(env)
        if built and (venv_root() / env / "bin" / "python").exists():
            offered[env_resource(env)] = 10000.0
    return offered


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None, reporter: Reporter, cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise RuntimeError("--executor ray needs Ray in the orchestrator environment: "
                               "run `make setup`") from None
        self.ray = ray
        self.reporter = reporter
        self.address = address
        # Task processes import this checkout's modules (workers started on this machine
        # inherit the variable; `make ray-head` / `ray-worker` set it on other nodes).
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if str(REPO_ROOT) not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, paths)])
        common = {"log_to_driver": False, "include_dashboard": False,
                  "logging_level": "ERROR", "configure_logging": True}
        if address:
            # Ray rewrites a loopback address to this host's outward one, where nodes started
            # by `make ray-head` / `ray-worker` listen: nothing to pin (docs/usage.md, "One
            # machine or a Ray cluster").
            ray.init(address=address, **common)
        else:
            # address="local": a new instance of our own. Without it ray.init() joins the
            # cluster last started on this machine (/tmp/ray/ray_current_cluster), e.g. a
            # head started with `make ray-head`, and refuses num_cpus there.
            ray.init(address="local", num_cpus=cpus, resources=node_resources(),
                     _node_ip_address="127.0.0.1", **common)
        self._remote = ray.remote(_call)
        self._refs: dict = {}

    def where(self) -> str:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
        kind = f"cluster {self.address}" if self.address else "embedded local instance"
        return f"ray ({kind}: {len(nodes)} node(s), {cpus:g} CPUs)"

    def unavailable(self, source: str) -> str | None:
        env = SOURCES[source].env
        have = self.ray.cluster_resources()
        wanted = [env_resource(env), code_resource()]
        if all(have.get(r, 0) > 0 for r in wanted):
            return None
        offered = sorted(k for k in have if k.startswith(("env:", "code:")))
        return (f"no node of the Ray cluster offers the {env} environment built from this "
                f"checkout's envs/{env}.lock.txt with this pipeline code (needs "
                f"{', '.join(wanted)}; the cluster offers {', '.join(offered) or 'none'}). "
                "Run `make setup` and `make ray-worker ADDRESS=...` from this checkout on a "
                "node, or use --executor local")

    def put(self, data: bytes):
        return self.ray.put(data)

    def ship_file(self, path):
        return self.ray.put(path.read_bytes())

    def submit(self, fn, *args, env, cpus, priority, label, **kwargs):
        resources = {code_resource(): 1}
        if env:
            resources[env_resource(env)] = 1
        ref = self._remote.options(num_cpus=cpus, resources=resources, name=label,
                                   max_retries=TASK_RETRIES, retry_exceptions=False
                                   ).remote(fn, *args, **kwargs)
        self._refs[ref] = label
        return ref

    def wait_any(self, handles) -> Outcome:
        ready, _ = self.ray.wait(list(handles), num_returns=1)
        ref = ready[0]
        self._refs.pop(ref, None)
        try:
            value, lines = self.ray.get(ref)
            return Outcome(ref, value, lines=lines)
        except self.ray.exceptions.RayTaskError as exc:  # the task's own exception
            cause = exc.as_instanceof_cause()
            return Outcome(ref, error=ray_failure(cause) if isinstance(cause, Exception)
                           else exc)
        except self.ray.exceptions.RayError as exc:  # died past its retries, cancelled, ...
            return Outcome(ref, error=ray_failure(exc))

    def on_each_node(self, fn, *args):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in self.ray.nodes() if n.get("Alive")
                 and n["Resources"].get(code_resource(), 0) > 0]
        remote = self.ray.remote(fn)
        refs = [remote.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(*args) for n in nodes]
        names = [f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in nodes]
        return list(zip(names, self.ray.get(refs)))

    def cancel(self, handles) -> None:
        for ref in list(handles):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass

    def close(self) -> None:
        self.ray.shutdown()


# Ray's own failures that a node's state causes, and what to do about each.
RAY_NODE_STATE = {
    "OutOfDiskError": "a node's object store is full and its disk is over Ray's capacity "
                      "threshold (95 % used), so Ray could not spill to it: free disk space on "
                      "that node (`df -h`; Ray's session logs are under /tmp/ray or "
                      "$RAY_TMPDIR), or give it a larger object store (`ray start "
                      "--object-store-memory`)",
    "ObjectStoreFullError": "a node's object store is full of objects still in use: give it a "
                            "larger object store (`ray start --object-store-memory`), or "
                            "convert fewer entries at once",
}


def ray_failure(exc: Exception) -> Exception:
    """A failure of a node's state as the driver reports it, whether Ray raised it to the
    driver or inside the task (then it arrives as RayTaskError(OutOfDiskError), a subclass
    of both): what to do (RAY_NODE_STATE) and Ray's message without the object ids it starts
    with. Any other failure passes unchanged."""
    import ray.exceptions

    for name, advice in RAY_NODE_STATE.items():
        if isinstance(exc, getattr(ray.exceptions, name)):
            own = getattr(exc, "cause", None) or exc   # a task's error carries Ray's own
            said = [ln for ln in str(own).splitlines()
                    if ln.strip() and not ln.lstrip().startswith(("('", "(b'", "ObjectRef("))]
            return PipelineError(name, f"{advice}. Ray said: {' '.join(said)}")
    return exc


def make_executor(kind: str, address: str | None, reporter: Reporter,
                  cpus: int | None = None) -> Executor:
    if kind == "ray":
        return RayExecutor(address, reporter, cpus)
    return LocalExecutor(reporter)



if __name__ == "__main__":
    # `python -m orchestrator.executor`: this node's resources as JSON for `ray start
    # --resources` (make ray-head / ray-worker).
    import json

    print(json.dumps(node_resources()))

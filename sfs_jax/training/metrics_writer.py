"""TensorBoard scalars without TensorFlow (tensorboardX), plus a JSON-lines copy.

The JSON lines (``metrics.jsonl``) are what the README's learning curves and the
ablation tables are drawn from, so nothing downstream needs TensorBoard installed.
"""

from __future__ import annotations

import json
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricsWriter:
    """Writes ``{split}/{name}`` scalars; only the first process writes."""

    def __init__(self, workdir: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.workdir = Path(workdir)
        self._tb = SummaryWriter(str(self.workdir / "tensorboard")) if enabled else None
        self._jsonl = open(self.workdir / "metrics.jsonl", "a") if enabled else None

    def write(self, split: str, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._tb.add_scalar(f"{split}/{name}", float(value), step)
        self._jsonl.write(json.dumps({"split": split, "step": step, **scalars}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def read_metrics(workdir: str | Path, split: str) -> list[dict]:
    """The rows of one split from ``metrics.jsonl``, last write per step winning (resumed runs).

    ``workdir`` is a training workdir or a metrics file itself (copies brought back from a GPU run).
    """
    path = Path(workdir)
    path = path if path.is_file() else path / "metrics.jsonl"
    if not path.exists():
        return []
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["split"] == split:
            rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]

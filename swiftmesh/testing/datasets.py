"""Large generated dataset files for the streaming tests and benchmarks (``bench/data``)."""

from __future__ import annotations

import json
import resource
from pathlib import Path

# One row of each method family, about 200-300 bytes of JSON.
ROWS = {
    "sft": lambda i: {"messages": [{"role": "system", "content": "You are brief."},
                                   {"role": "user", "content": f"Question {i}: what is {i} + {i}? Explain shortly."},
                                   {"role": "assistant", "content": f"{i} + {i} = {2 * i}, by adding the two numbers."}]},
    "dpo": lambda i: {"instruction": f"Question {i}: what is {i} + {i}? Explain shortly.",
                      "chosen": f"{i} + {i} = {2 * i}, by adding the two numbers.",
                      "rejected": f"{i} + {i} = {2 * i + 1}, I think, but I am not sure at all."},
}


def write_large_jsonl(path: str | Path, size_bytes: int, kind: str = "dpo", block_rows: int = 1000) -> int:
    """Write a JSONL file of at least ``size_bytes`` bytes: a block of ``block_rows`` distinct
    ``kind`` rows (``sft`` or ``dpo``), repeated (so writing is disk-speed). Returns the rows written."""
    block = "".join(json.dumps(ROWS[kind](i)) + "\n" for i in range(block_rows)).encode()
    reps = max(1, -(-size_bytes // len(block)))
    with open(path, "wb") as f:
        f.writelines(block for _ in range(reps))
    return reps * block_rows


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (bytes; Linux's VmHWM via getrusage)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

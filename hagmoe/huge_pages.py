"""Transparent huge pages for torch's CPU allocator, in the processes hagmoe starts.

A decode step streams every weight it touches (and, at long contexts, the KV cache) once; on
4 KiB pages that is a TLB miss every 4 KiB. Where THP_MEM_ALLOC_ENABLE is set, torch aligns each
allocation of 2 MiB or more to 2 MiB and advises the kernel to back it with huge pages
(MADV_HUGEPAGE, honoured unless the machine's THP mode is `never`). torch reads the setting
once, when it is imported, so the entry points (the `hagmoe` command, the benchmark scripts)
import this module before torch. A value already in the environment is kept (0 turns it off).
Measured in docs/benchmarks.md ("Huge pages")."""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

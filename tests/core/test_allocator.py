"""glibc's malloc in processes of ours: kept freed memory, unless the user chose."""

import os
import subprocess
import sys

import pytest

from napari_patchwork.core.allocator import keeping_freed_memory, malloc_chosen_by_user


def keep_in_a_fresh_process(**environment):
    """keep_freed_memory() in a new interpreter (it changes that whole process's malloc)."""
    code = "from napari_patchwork.core.allocator import keep_freed_memory as k; print(k())"
    names = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
    env = {k: v for k, v in os.environ.items() if k not in names and k != "GLIBC_TUNABLES"}
    env.update(environment)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return result.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_keep_freed_memory_is_taken_by_glibc_unless_the_user_set_malloc():
    assert keep_in_a_fresh_process() == "True"
    assert keep_in_a_fresh_process(MALLOC_TRIM_THRESHOLD_="0") == "False"
    assert keep_in_a_fresh_process(GLIBC_TUNABLES="glibc.malloc.trim_threshold=0") == "False"


def test_a_users_malloc_setting_is_seen_and_kept():
    assert malloc_chosen_by_user({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1"})
    assert not malloc_chosen_by_user({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX"})
    chosen = {"MALLOC_TOP_PAD_": "1", "HOME": "/root"}
    assert keeping_freed_memory(chosen) == chosen

"""scripts/deps, the install step of the README's two commands, run against made-up file trees:
it must ask for libclang-dev exactly when the files bindgen loads are missing, whatever else of
LLVM a machine ships (a fresh Debian 12 has libclang-cpp.so.14 without libclang itself)."""

import os
import subprocess
from pathlib import Path

import pytest

DEPS = Path(__file__).resolve().parent.parent / "scripts" / "deps"


def missing(root, *args):
    """The packages scripts/deps would install on a machine whose files are those under root."""
    env = dict(os.environ, MQD_DEPS_ROOT=str(root))
    env.pop("LIBCLANG_PATH", None)
    out = subprocess.run(
        ["bash", str(DEPS), "--dry-run", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def touch(root, *paths):
    for path in paths:
        f = root / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
        if f.parent.name in ("bin", "sbin"):
            f.chmod(0o755)


FRESH_DEBIAN = [
    # What a fresh Debian 12 with gcc and the Rust toolchain has of LLVM: no libclang.
    "/usr/lib/llvm-14/lib/libLLVM-14.so.1",
    "/usr/lib/llvm-14/lib/libclang-cpp.so.14",
    "/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14",
    "/usr/bin/g++",
]
LIBCLANG_DEV = [
    "/usr/lib/llvm-14/lib/libclang.so",
    "/usr/lib/llvm-14/lib/libclang-14.so.1",
    "/usr/lib/x86_64-linux-gnu/libclang-14.so.1",
    "/usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h",
]


def test_a_fresh_machine_is_asked_for_libclang(tmp_path):
    touch(tmp_path, *FRESH_DEBIAN)
    assert missing(tmp_path) == ["libclang-dev"]


def test_nothing_is_installed_once_libclang_and_its_headers_are_there(tmp_path):
    touch(tmp_path, *FRESH_DEBIAN, *LIBCLANG_DEV)
    assert missing(tmp_path) == []


@pytest.mark.parametrize(
    "library",
    [
        "/usr/lib/llvm-14/lib/libclang.so.1",
        "/usr/lib/x86_64-linux-gnu/libclang-14.so.14",
        "/usr/local/lib/libclang.so",
    ],
)
def test_any_name_bindgen_loads_counts(tmp_path, library):
    touch(tmp_path, *FRESH_DEBIAN, library, "/usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h")
    assert missing(tmp_path) == []


def test_libclang_without_clang_headers_is_not_enough(tmp_path):
    # libclang1-14 alone: bindgen loads it, then fails on <stddef.h>.
    touch(tmp_path, *FRESH_DEBIAN, "/usr/lib/x86_64-linux-gnu/libclang-14.so.1")
    assert missing(tmp_path) == ["libclang-dev"]


def test_a_machine_without_a_cxx_compiler_is_asked_for_one(tmp_path):
    touch(tmp_path, *LIBCLANG_DEV)
    assert missing(tmp_path) == ["g++"]


def test_the_test_suite_needs_libmemcached_headers_and_twemproxy(tmp_path):
    touch(tmp_path, *FRESH_DEBIAN, *LIBCLANG_DEV)
    wanted = missing(tmp_path, "--tests")
    assert "libmemcached-dev" in wanted  # pylibmc builds from source against it
    assert "nutcracker" in wanted
    touch(
        tmp_path,
        "/usr/include/libmemcached/memcached.h",
        "/usr/sbin/nutcracker",
    )
    assert "libmemcached-dev" not in missing(tmp_path, "--tests")
    assert "nutcracker" not in missing(tmp_path, "--tests")


def test_the_test_suite_needs_chromium_and_tmux(tmp_path):
    touch(tmp_path, *FRESH_DEBIAN, *LIBCLANG_DEV)
    wanted = missing(tmp_path, "--tests")
    assert "chromium" in wanted and "tmux" in wanted
    assert "chromium" not in missing(tmp_path), "only the tests need a browser"
    # The wrapper script alone is not the browser.
    touch(tmp_path, "/usr/bin/chromium", "/usr/bin/tmux")
    assert "chromium" in missing(tmp_path, "--tests")
    assert "tmux" not in missing(tmp_path, "--tests")
    touch(tmp_path, "/usr/lib/chromium/chromium")
    (tmp_path / "usr/lib/chromium/chromium").chmod(0o755)
    assert "chromium" not in missing(tmp_path, "--tests")


def test_the_test_suite_needs_ruby_with_dalli_and_node_with_npm(tmp_path):
    touch(tmp_path, *FRESH_DEBIAN, *LIBCLANG_DEV)
    wanted = missing(tmp_path, "--tests")
    assert {"ruby", "ruby-dalli", "nodejs", "npm"} <= set(wanted)
    assert not {"ruby", "ruby-dalli", "nodejs", "npm"} & set(missing(tmp_path))
    # ruby-dalli ships no interpreter, and the interpreter no dalli: each is checked.
    touch(tmp_path, "/usr/share/rubygems-integration/all/gems/dalli-3.0.6/lib/dalli.rb")
    wanted = missing(tmp_path, "--tests")
    assert "ruby-dalli" not in wanted and "ruby" in wanted
    touch(tmp_path, "/usr/bin/ruby", "/usr/bin/node")
    wanted = missing(tmp_path, "--tests")
    assert "ruby" not in wanted and "nodejs" not in wanted and "npm" in wanted
    touch(tmp_path, "/usr/bin/npm")
    assert "npm" not in missing(tmp_path, "--tests")


def test_the_test_suite_needs_ip_strace_and_systemd_analyze(tmp_path):
    touch(tmp_path, *FRESH_DEBIAN, *LIBCLANG_DEV)
    wanted = missing(tmp_path, "--tests")
    assert {"iproute2", "strace", "systemd"} <= set(wanted)
    assert not {"iproute2", "strace", "systemd"} & set(missing(tmp_path))
    touch(tmp_path, "/usr/bin/ip", "/usr/bin/strace", "/usr/bin/systemd-analyze")
    assert not {"iproute2", "strace", "systemd"} & set(missing(tmp_path, "--tests"))

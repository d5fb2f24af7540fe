#!/usr/bin/env bash
# Compiles every C++ file of a build without CUDA (-DQWENQ_CUDA=OFF, what a clone on a machine without nvcc gets),
# syntax only: CI's build has nvcc, so code that names a CUDA-only declaration outside `#ifdef QWENQ_HAVE_CUDA`
# would otherwise reach users unseen (it did once: trainer/gpu_support.cpp, found on 2026-12-05). Configures
# build-cpu-only/ (no objects are written there) and runs its compile commands with -fsyntax-only, in parallel, for
# the files that include a header of ours (or are one) testing QWENQ_HAVE_CUDA: about half of them, ~1.5 min on 2 cores.
# Usage: scripts/cpu_only_check.sh [build-dir]. Exit 1 and the compiler's messages when a file does not compile.
# Then, on x86-64, the files whose SIMD paths carry per-function target attributes (`__attribute__((target`, or
# core/cpu_features.h) are compiled to objects with -march=x86-64-v2 instead of -march=native: what a machine without
# AVX-512 builds. A helper those paths call must carry the attribute too (a lambda does not inherit it); with
# -march=native on an AVX-512 machine such a mistake compiles, elsewhere it stops the build (it did once: 2026-12-06,
# kernels/gemm_bf16.cpp, found by the x86-64-v3 build of scripts/gpu_prepare.sh).
# QWENQ_CHECK_CXX=aarch64-linux-gnu-g++ (Debian's g++-aarch64-linux-gnu) checks every file with that compiler instead,
# without -march=native: whether the CPU code builds for an ARM host such as a GH200's Grace (not in CI; 2026-12-05:
# all 262 library, tool and test files after one test's fix).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-cpu-only}
start=$(date +%s)
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
mkdir -p "$dir"
if ! cmake -S . -B "$dir" "${generator[@]}" -DQWENQ_CUDA=OFF > "$dir/configure.log" 2>&1; then
  cat "$dir/configure.log" >&2
  echo "cpu_only_check: configuring without CUDA failed (log above)" >&2
  exit 1
fi
QWENQ_CHECK_CXX=${QWENQ_CHECK_CXX:-} python3 - "$dir/compile_commands.json" "$(nproc)" <<'EOF'
import json, os, shlex, subprocess, sys
from concurrent.futures import ThreadPoolExecutor

cross = os.environ["QWENQ_CHECK_CXX"]
entries = [e for e in json.load(open(sys.argv[1]))
           if not e["file"].endswith(".cu") and not (cross and "/benchmarks/" in e["file"])]

def command(e):  # the build's command without the object output and the compile-only flag
    args = e["arguments"] if "arguments" in e else shlex.split(e["command"])
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "-o":
            skip = True
        elif a != "-c" and not (cross and a == "-march=native"):
            out.append(a)
    if cross:
        out[0] = cross
    return out

texts = {}
def text_of(path):
    if path not in texts:
        with open(path, errors="replace") as f:
            texts[path] = f.read()
    return texts[path]

def names_the_switch(path):
    return "QWENQ_HAVE_CUDA" in text_of(path)

def names_a_target(path):
    return "__attribute__((target" in text_of(path) or "core/cpu_features.h" in text_of(path)

def check(e):
    # A file none of whose own headers (-MM: the project's, not the system's) mentions QWENQ_HAVE_CUDA preprocesses
    # to the same text in both builds, and the CUDA build compiled it: only the others are compiled here.
    # A cross compiler checks every file.
    if not cross:
        r = subprocess.run(command(e) + ["-MM", "-MF", "/dev/stdout"], cwd=e["directory"], capture_output=True, text=True)
        deps = r.stdout.replace("\\\n", " ").split()[1:]
        if r.returncode == 0 and not any(names_the_switch(os.path.join(e["directory"], d)) for d in deps):
            return e["file"], None, ""
    r = subprocess.run(command(e) + ["-fsyntax-only"], cwd=e["directory"], capture_output=True, text=True)
    return e["file"], r.returncode, r.stderr

# Runs fn over the entries in parallel, printing each failure's messages; returns (failed, compiled).
def compile_all(fn, items, how):
    failed = compiled = 0
    with ThreadPoolExecutor(max_workers=int(sys.argv[2])) as pool:
        for path, rc, err in pool.map(fn, items):
            compiled += rc is not None
            if rc:
                failed += 1
                sys.stderr.write(err)
                sys.stderr.write(f"cpu_only_check: {path} does not compile {how}\n")
    return failed, compiled

how = "with " + cross if cross else "without CUDA"
failed, compiled = compile_all(check, entries, how)
if failed:
    sys.exit(f"cpu_only_check: {failed} of {compiled} C++ files fail to compile {how}")

if not cross and os.uname().machine == "x86_64":
    def baseline(e):
        args = [("-march=x86-64-v2" if a == "-march=native" else a) for a in command(e)]
        if "-march=x86-64-v2" not in args:
            args.append("-march=x86-64-v2")
        r = subprocess.run(args + ["-c", "-o", "/dev/null"], cwd=e["directory"], capture_output=True, text=True)
        return e["file"], r.returncode, r.stderr
    targeted = [e for e in entries if "/benchmarks/" not in e["file"] and names_a_target(e["file"])]
    bad, _ = compile_all(baseline, targeted, "for -march=x86-64-v2")
    if bad:
        sys.exit(f"cpu_only_check: {bad} of {len(targeted)} files with target attributes fail for -march=x86-64-v2")
    print(f"cpu_only_check: the {len(targeted)} files with target attributes compile for -march=x86-64-v2")
if cross:
    print(f"cpu_only_check: all {compiled} C++ files compile with {cross}")
else:
    print(f"cpu_only_check: the {compiled} of {len(entries)} C++ files whose headers test QWENQ_HAVE_CUDA compile without it")
EOF
echo "cpu_only_check: $(( $(date +%s) - start )) s"

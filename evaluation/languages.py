"""How the sandbox builds and runs a program in each language: source file name, compile and run commands,
what fails a program besides its exit status, and the Debian packages that provide the toolchain.

Commands follow MultiPL-E's evaluators (nuprl/MultiPL-E evaluation/src, and the multiple-eval harness that
Qwen2.5-Coder's report used): each program is one file in the sandbox's private /tmp, compiled (if the
language is compiled) and run there; it passes when every step exits 0, and for C# also when mono's output holds
neither a failed Debug.Assert nor an unhandled exception (mono exits 0 after a failed Debug.Assert).
Python is special: the jail executes it in its own interpreter (no second interpreter start, ~30 ms saved per
program), the way the HumanEval harnesses do.

`managed_runtime`: the JVM, V8 (node), mono and the Go and Rust toolchains reserve far more address space than they
use (the JVM alone maps a heap of 1/4 of the machine's RAM plus 1 GB of class space at start), so RLIMIT_AS
breaks them; their memory is bounded by the program's cgroup only (evaluation/cgroup.py).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Dict, Tuple

JAVATUPLES = "/usr/share/java/javatuples.jar"  # Debian libjavatuples-java (1.2, what MultiPL-E's tests import)
# Runtimes size their thread pools by the machine's CPUs (a JVM on 64 cores: ~100 threads; `go build` runs one
# compiler per CPU): sized for 2 CPUs they stay well inside the program's process budget (Limits.processes,
# threads included) on any machine. No perf-data file in /tmp for the JVM.
JVM = ("-XX:-UsePerfData", "-XX:ActiveProcessorCount=2")


@dataclass(frozen=True)
class Language:
    name: str
    source: str  # file name the program is written to (javac wants Problem.java for `public class Problem`)
    run: Tuple[str, ...]  # empty for Python
    compile: Tuple[str, ...] = ()  # empty: interpreted
    env: Dict[str, str] = field(default_factory=dict)  # added to the sandbox's clean environment
    failure_markers: Tuple[str, ...] = ()  # output that fails a program whatever its exit status
    managed_runtime: bool = False  # RLIMIT_AS breaks it: the cgroup bounds its memory
    compile_seconds: float = 0.0  # wall clock added to the program's timeout for the compile step
    packages: Tuple[str, ...] = ()  # Debian packages (.ci/run and the Dockerfile install them)

    def missing(self) -> str:
        """The first command of this language not on the PATH the sandbox gives programs, or ''."""
        for command in filter(None, (self.compile[:1], self.run[:1])):
            if not command[0].startswith("./") and shutil.which(command[0], path=PROGRAM_PATH) is None:
                return command[0]  # ./a.out and ./main: built by the compile command
        return ""


PROGRAM_PATH = "/usr/local/bin:/usr/bin:/bin"
LANGUAGES = {language.name: language for language in (
    Language("python", "", ()),  # executed in the jail's own interpreter, see above
    Language("cpp", "test.cpp", ("./a.out",), ("g++", "-std=c++17", "test.cpp", "-lcrypto", "-lssl"),
             compile_seconds=30, packages=("g++", "libssl-dev")),  # HumanEval_162 (md5) links OpenSSL
    Language("java", "Problem.java", ("java", "-ea", *JVM, "-cp", f".:{JAVATUPLES}", "Problem"),
             ("javac", "-encoding", "UTF8", *(f"-J{flag}" for flag in JVM), "-cp", JAVATUPLES, "Problem.java"),
             managed_runtime=True, compile_seconds=30,
             packages=("openjdk-17-jdk-headless", "libjavatuples-java")),
    Language("php", "test.php", ("php", "-f", "test.php"), packages=("php-cli",)),
    Language("ts", "test.ts", ("node", "test.js"), ("tsc", "--target", "ES2015", "--lib", "ES2015,DOM", "test.ts"),
             managed_runtime=True, compile_seconds=30, packages=("nodejs", "node-typescript")),
    Language("cs", "Program.cs", ("mono", "Program.exe"), ("mcs", "-d:DEBUG", "-r:System.Numerics.dll", "Program.cs"),
             env={"MONO_TRACE_LISTENER": "Console.Error"},
             failure_markers=("System.Diagnostics.DefaultTraceListener.Fail", "Unhandled Exception"),
             managed_runtime=True, compile_seconds=30, packages=("mono-mcs", "mono-runtime")),
    # bc: Bash answers do arithmetic with it (13 of the 158 Bash verdicts Qwen published for its 7B base model
    # fail with "bc: command not found", answers that pass where bc exists).
    Language("sh", "test.sh", ("bash", "test.sh"), packages=("bash", "bc")),
    Language("js", "test.js", ("node", "test.js"), managed_runtime=True, packages=("nodejs",)),
    Language("rs", "main.rs", ("./main",), ("rustc", "-C", "codegen-units=1", "-o", "main", "main.rs"),
             managed_runtime=True,
             compile_seconds=30, packages=("rustc",)),
    # `go test` builds and runs in one step (a build failure is "failed"); its cache lives in the private /tmp.
    # Go >= 1.20 ships no compiled standard library: each program then compiles the packages it imports.
    Language("go", "main_test.go", ("go", "test", "main_test.go"),
             env={"GOTOOLCHAIN": "local", "GOMAXPROCS": "2", "GOFLAGS": "-p=2"},
             managed_runtime=True, compile_seconds=60, packages=("golang-go",)),
)}


"""MultiPL-E (HumanEval translated to other languages), zero-shot, run with the toolchains this machine has.

Data: the MultiPL-E JSON files bundled in a registry package (`codellama_hf.assets.multipl_e_dir()`: py, cpp,
java, cs, "transform" variant), a local file of the same schema (name, prompt, tests, stop_tokens), or the Hub
dataset nuprl/MultiPL-E. Programs are prompt + completion + "\\n" + tests, compiled and run as MultiPL-E does; a
language whose compiler/runtime (or Java's javatuples jar) is missing is reported as skipped, never as failed.
MultiPL-E's licence forbids using these files as training data.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from codellama_hf.evaluation.benchmarks import Benchmark, Problem
from codellama_hf.evaluation.sandbox import Program

HUB_DATASET = "nuprl/MultiPL-E"
JAVATUPLES_ENV = "CODELLAMA_HF_JAVATUPLES_JAR"
JVM = ["-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData"]
SOURCE_FILE = {"py": "main.py", "cpp": "main.cpp", "java": "Problem.java", "cs": "Problem.cs"}


def javatuples_jar() -> str | None:
    """MultiPL-E's Java prompts import org.javatuples (Debian: libjavatuples-java)."""
    for candidate in (os.environ.get(JAVATUPLES_ENV), "/usr/share/java/javatuples.jar"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def load_rows(language: str, source: str | None) -> list[dict]:
    if source is None:
        from codellama_hf.assets import multipl_e_dir

        source = str(multipl_e_dir() / f"humaneval-{language}-transform.json")
    path = Path(source)
    if path.exists():
        text = path.read_text()
        try:
            rows = (
                json.loads(text)
                if path.suffix == ".json"
                else [json.loads(line) for line in text.splitlines() if line]
            )
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not MultiPL-E JSON ({err})") from None
    else:
        import datasets

        try:
            rows = list(datasets.load_dataset(source, f"humaneval-{language}", split="test"))
        except Exception as err:
            raise RuntimeError(f"could not load MultiPL-E {source!r} ({type(err).__name__}: {err})") from None
    for row in rows:
        missing = [f for f in ("name", "prompt", "tests", "stop_tokens") if f not in row]
        if missing:
            raise ValueError(f"{source}: MultiPL-E row {row.get('name', '?')} lacks field(s) {missing}")
    return rows


class MultiPLE(Benchmark):
    timeout_floor = 20.0  # compilation included
    prompt_forms = ("strip", "unstripped")  # bigcode's multiple-* tasks strip the prompt

    def __init__(self, language: str, source: str | None = None):
        super().__init__()
        if language not in SOURCE_FILE:
            raise ValueError(f"unknown MultiPL-E language {language!r}; choose one of {', '.join(SOURCE_FILE)}")
        self.name, self.language = f"multiple-{language}", language
        self.problems = [
            Problem(r["name"], r["prompt"], tuple(r["stop_tokens"]), data=r) for r in load_rows(language, source)
        ]

    def missing_toolchain(self) -> str | None:
        tools = {"py": [], "cpp": ["g++"], "java": ["javac", "java"], "cs": ["mcs", "mono"]}[self.language]
        missing = [tool for tool in tools if shutil.which(tool) is None]
        if missing:
            return f"{', '.join(missing)} not found on PATH"
        if self.language == "java" and javatuples_jar() is None:
            return f"javatuples jar not found (apt-get install libjavatuples-java, or set {JAVATUPLES_ENV})"
        return None

    def program(self, problem: Problem, completion: str, timeout: float) -> Program:
        code = problem.prompt + completion + "\n" + problem.data["tests"]
        if self.language == "py":
            return Program(source=code, timeout=timeout)
        files = {SOURCE_FILE[self.language]: code}
        if self.language == "cpp":
            return Program(
                command=["sh", "-c", "g++ -std=c++17 -o main main.cpp && ./main"], files=files, timeout=timeout
            )
        if self.language == "java":
            jar = javatuples_jar()
            script = (
                f"javac {' '.join('-J' + opt for opt in JVM)} -cp {jar} Problem.java && "
                f"java -ea {' '.join(JVM)} -cp {jar}:. Problem"
            )
            return Program(
                command=["sh", "-c", script],
                files=files,
                timeout=timeout,
                memory_bytes=8 << 30,
                readable=[str(Path(jar).resolve().parent)],
            )
        # C#, as MultiPL-E runs it: Debug.Assert needs DEBUG; a failed assert prints a trace and must fail the run.
        script = (
            "mcs -d:DEBUG -r:System.Numerics.dll Problem.cs -out:Problem.exe && "
            "{ mono Problem.exe > run.log 2>&1; code=$?; cat run.log; "
            "[ $code -eq 0 ] && ! grep -q DefaultTraceListener.Fail run.log; }"
        )
        return Program(command=["sh", "-c", script], files=files, timeout=timeout, memory_bytes=8 << 30)

"""MultiPL-E: HumanEval translated into other languages, scored as the harness behind the Qwen2.5-Coder report's
MultiPL-E columns builds its programs, with MultiPL-E's own pass rule.

Data: evaluation/data/multiple/humaneval-<lang>.jsonl, byte-identical copies of the files in QwenLM/Qwen2.5-Coder
(qwencoder-eval/base/benchmarks/multiple-eval/data, commit d5ead97), which are MultiPL-E's HumanEval
translations (nuprl/MultiPL-E, "reworded" prompts) with upstream task ids (`HumanEval_23_strlen`); 154-161 of
the 164 problems per language (MultiPL-E drops what does not translate). Licence: MultiPL-E's BSD-3 with a
clause that forbids using the contents as training data (evaluation/data/multiple/LICENSE): evaluation only.
Each file's sha256 is checked when it is loaded.

The model continues the prompt (signature + comment); its output is cut at the file's stop tokens (TypeScript
also at the harness's extra `\\nexport`, `\\nimport`, `\\nconsole.log`). Program = prompt + completion + "\\n" +
the problem's tests, as the harness assembles it: C++ gets its helper #includes the prompt lacks in front, C#
its `using` lines, PHP `<?php` when missing and `?>` after the tests. The sandbox (evaluation/languages.py)
compiles and runs it; it passes when every step exits 0 (C#: and mono reports no failed Debug.Assert and no
unhandled exception) - MultiPL-E's rule. Where the Qwen harness differs (it fails a JavaScript program that
prints anything, passes a C# program whose error output lacks the substring "Fail", and retries TypeScript
with tsc's defaults) docs/evaluation.md says so. MultiPL-E publishes no reference solutions: there is no
oracle; tests/test_eval_multiple.py runs hand-written right and wrong programs per language instead.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import List, Tuple

from evaluation.problem import Problem
from evaluation.tasks.base import Answer, Task, TaskContext, TaskError
from evaluation.tasks.data_files import verified_bytes

DATA = Path(__file__).resolve().parents[1] / "data" / "multiple"
SHA256 = {
    "cpp": "8717eabdf202137158c84506144b0fb1e73d5ecccbe5363ec79009ca014df629",
    "cs": "1c3fe18be10addc2d0b96311f4db192ae3232e08628d17768d889d6ab87be224",
    "go": "7f5dfe3ff001049b1221e9d21a8119b5cbc38eb87c97fefc5d57fa7adc1df888",
    "java": "b21b015763452ec4f9f4e0e6425148ec331ace4da1232c8b4d441186185f6265",
    "js": "634e2eee8d6e22de07c121b972207683dd96be76256bf44bdfc1a3386b739287",
    "php": "bebd86875b1d8e65a8b7e692ed7bdf64612b44aa388825ea4dab40c7047c786b",
    "rs": "e33f562838e973b7e6b8d76dbc1fb84b076d7426629b4cdc624f12678778d2fa",
    "sh": "2f702106e9ce4aa7385de568d9248d6c57c90382d782b162cb9e072fbd01ccf8",
    "ts": "4b1af1050c9f226335d54a8c80553c39454a525cace3e67bdcfcc9092ba02637",
}
# The report's MultiPL-E columns (Rust and Go are extra: not in that table).
COLUMNS = {"cpp": "MultiPL-E C++", "java": "MultiPL-E Java", "php": "MultiPL-E PHP", "ts": "MultiPL-E TS",
           "cs": "MultiPL-E C#", "sh": "MultiPL-E Bash", "js": "MultiPL-E JS", "rs": "", "go": ""}
TS_STOPS = ("\nexport", "\nimport", "\nexport default", "\nimport default", "\nconsole.log")
CPP_INCLUDES = ("#include<stdlib.h>", "#include<algorithm>", "#include<math.h>", "#include<stdio.h>",
                "#include<vector>", "#include<string>", "#include<climits>", "#include<cstring>",
                "#include<iostream>", "#include<cassert>")
CS_USINGS = ("using System.Numerics;", "using System.Diagnostics;", "using System.Collections.Generic;",
             "using System.Linq;", "using System.Text;", "using System.Security.Cryptography;",
             "using System.Collections.Generic;")
NO_REFERENCES = ("MultiPL-E publishes no reference solutions, so --oracle cannot score it "
                 "(tests/test_eval_multiple.py runs hand-written right and wrong programs per language instead)")


@functools.lru_cache(maxsize=None)
def records(language: str) -> Tuple[dict, ...]:
    """The language's problems, after checking the file is the upstream release byte for byte."""
    data = verified_bytes(DATA / f"humaneval-{language}.jsonl", SHA256[language],
                          "restore it from this repository (git checkout -- evaluation/data/multiple)")
    return tuple(json.loads(line) for line in data.decode().splitlines() if line.strip())


class MultiPLE(Task):
    max_new_tokens = 512

    def __init__(self, language: str):
        self.name, self.language, self.column = f"multiple_{language}", language, COLUMNS[language]

    def problems(self, limit: int, context: TaskContext) -> List[Problem]:
        extra = TS_STOPS if self.language == "ts" else ()
        return [Problem(r["name"], r["prompt"], "", r["tests"], stops=tuple(r["stop_tokens"]) + extra,
                        max_new_tokens=self.max_new_tokens, language=self.language)
                for r in records(self.language)][:limit or None]

    def unavailable(self, oracle: bool) -> str:
        return NO_REFERENCES if oracle else ""

    def oracle(self, problem: Problem) -> Answer:
        raise TaskError(f"{self.name}: {NO_REFERENCES}")

    def program(self, problem: Problem, head: str) -> str:
        program = head + "\n" + problem.test
        if self.language == "cpp":
            return "".join(f"{line}\n" for line in CPP_INCLUDES if line not in problem.prompt) + "\n" + program
        if self.language == "cs":
            return "".join(f"{line}\n" for line in CS_USINGS) + "\n" + program
        if self.language == "php":
            return ("" if program.startswith("<?php") else "<?php\n") + program + "?>"
        return program


TASKS = [MultiPLE(language) for language in COLUMNS]

"""File name -> language, for the per-language counts and the per-language quality rules.

The table covers the programming languages of The Stack / StarCoder's selection (the Qwen2.5-Coder report
trains on 92 languages and does not list them; this is the public list closest to it) plus the data and markup
formats a code corpus holds, so the report can count and filter them by name. Unknown extensions are "other"
(file and repo modes) or "text" (text mode). Extensions are matched lower-cased; exact file names
(Makefile, Dockerfile, ...) first.
"""
from __future__ import annotations

import os

_LANGUAGE_EXTENSIONS = {
    "ada": ".adb .ads .ada", "agda": ".agda", "alloy": ".als", "antlr": ".g4", "applescript": ".applescript",
    "assembly": ".asm .s .nasm", "augeas": ".aug", "awk": ".awk", "batch": ".bat .cmd", "bluespec": ".bsv",
    "c": ".c .h", "csharp": ".cs", "clojure": ".clj .cljs .cljc .edn", "cmake": ".cmake", "cobol": ".cob .cbl",
    "coffeescript": ".coffee", "common-lisp": ".lisp .lsp .cl", "cpp": ".cc .cpp .cxx .c++ .hpp .hh .hxx .h++ .inl",
    "crystal": ".cr", "css": ".css", "cuda": ".cu .cuh", "cython": ".pyx .pxd", "d": ".d", "dart": ".dart",
    "dockerfile": ".dockerfile", "elisp": ".el", "elixir": ".ex .exs", "elm": ".elm", "erlang": ".erl .hrl",
    "f-sharp": ".fs .fsi .fsx", "fortran": ".f .f90 .f95 .f03 .for", "glsl": ".glsl .vert .frag", "go": ".go",
    "groovy": ".groovy .gradle", "haskell": ".hs .lhs", "html": ".html .htm .xhtml", "idris": ".idr",
    "isabelle": ".thy", "java": ".java", "java-server-pages": ".jsp", "javascript": ".js .mjs .cjs .jsx",
    "json": ".json .jsonl .geojson", "julia": ".jl", "jupyter": ".ipynb", "kotlin": ".kt .kts", "lean": ".lean",
    "less": ".less", "literate-agda": ".lagda", "literate-coffeescript": ".litcoffee", "lua": ".lua",
    "makefile": ".mk .mak", "maple": ".mpl", "markdown": ".md .markdown", "mathematica": ".nb .wl",
    "matlab": ".mat", "nim": ".nim", "nix": ".nix", "objective-c": ".m .mm", "ocaml": ".ml .mli", "pascal": ".pas .pp",
    "perl": ".pl .pm .t", "php": ".php .phtml", "powershell": ".ps1 .psm1", "prolog": ".pro .prolog",
    "protobuf": ".proto", "python": ".py .pyi .pyw", "r": ".r .rmd", "racket": ".rkt", "rmarkdown": ".qmd",
    "restructuredtext": ".rst", "ruby": ".rb .rake .gemspec", "rust": ".rs", "sas": ".sas", "scala": ".scala .sc",
    "scheme": ".scm .ss", "scss": ".scss .sass", "shell": ".sh .bash .zsh .ksh", "smalltalk": ".st",
    "solidity": ".sol", "sparql": ".sparql .rq", "sql": ".sql", "stan": ".stan", "standard-ml": ".sml .sig",
    "stata": ".do .ado", "swift": ".swift", "systemverilog": ".sv .svh", "tcl": ".tcl", "tcsh": ".tcsh .csh",
    "tex": ".tex .sty .cls .bib", "thrift": ".thrift", "toml": ".toml", "typescript": ".ts .tsx .mts .cts",
    "verilog": ".v .vh", "vhdl": ".vhd .vhdl", "visual-basic": ".vb .bas .vbs", "vue": ".vue", "xslt": ".xsl .xslt",
    "yacc": ".y .yy", "yaml": ".yaml .yml", "zig": ".zig", "xml": ".xml .xsd .svg .plist", "csv": ".csv",
    "tsv": ".tsv", "ini": ".ini .cfg .conf", "text": ".txt", "svelte": ".svelte", "graphql": ".graphql .gql",
    "hcl": ".tf .hcl", "starlark": ".bzl .bazel",
}
EXTENSION_LANGUAGES = {ext: language for language, exts in _LANGUAGE_EXTENSIONS.items() for ext in exts.split()}
FILENAME_LANGUAGES = {
    "makefile": "makefile", "gnumakefile": "makefile", "dockerfile": "dockerfile", "containerfile": "dockerfile",
    "cmakelists.txt": "cmake", "rakefile": "ruby", "gemfile": "ruby", "build": "starlark", "workspace": "starlark",
    "jenkinsfile": "groovy", "vagrantfile": "ruby", "meson.build": "meson",
}
# Formats that hold data rather than code: quality.py caps their size (The Stack keeps them below 5,000 chars).
DATA_LANGUAGES = frozenset({"json", "yaml", "csv", "tsv", "xml"})


def language_of(path: str, default: str = "other") -> str:
    """Language from the file name (exact names first, then the lower-cased extension), e.g. 'a/b.PY' -> 'python'."""
    name = os.path.basename(path).lower()
    if name in FILENAME_LANGUAGES:
        return FILENAME_LANGUAGES[name]
    return EXTENSION_LANGUAGES.get(os.path.splitext(name)[1], default)

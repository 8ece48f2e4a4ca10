#!/usr/bin/env python3
"""Every flag and SIGMATUNE_* variable that deploy/ gives our binaries exists in those binaries.

Finds every invocation of sigmatune-coordinator, sigmatune-worker and sigmatune (the CLI) in the
files under deploy/ and checks each --flag against what the binary itself lists:

  - shell scripts (*.sh, *.bash, *.sbatch, anything with a sh/bash shebang): logical lines
    (backslash continuations and multi-line arrays joined), with bash arrays ("${args[@]}") and
    variables holding a binary ("$worker", assigned from something naming sigmatune-worker)
    expanded; quoted strings and $(...) that contain an invocation are scanned too;
  - Dockerfiles: RUN, CMD, ENTRYPOINT, HEALTHCHECK (exec form or shell form; a CMD of flags is
    appended to an ENTRYPOINT naming a binary);
  - YAML (Kubernetes, compose): command/args/entrypoint lists (flow or block items, each
    `--flag=value` or `--flag value` across items, block scalars and quoted strings holding shell
    scripts); args without a command are given to the binary the container's image or name
    names (coordinator / worker);
  - Markdown: fenced and indented code blocks (as shell, or as YAML / Dockerfile when tagged so);
  - *.env files (KEY=value lines).

sigmatune-coordinator and sigmatune-worker are absl binaries: their flags are the ones
`BINARY --helpfull` lists (plus absl's built-in help flags and --noBOOL). The CLI lists its global
and per-command flags in `sigmatune --help`; a flag must be global or belong to the command given.
A binary is recognised where a command starts (after VAR=value, exec, env, timeout, ip netns exec,
...); sigmatune-coordinator and sigmatune-worker also anywhere in the arguments of a launcher
(mpirun, srun, ssh, tini, docker run, kubectl exec, ...) except as the value of a name option
(docker run --name X). A bare "sigmatune" elsewhere is a path or a user name, and
"kubectl logs deploy/sigmatune-coordinator -f" runs no binary of ours.

Environment variables: every SIGMATUNE_* name given in an environment (export, declare -x,
NAME=value before a command, env NAME=..., mpirun -x NAME, sbatch/srun --export=..., docker -e /
--env, Dockerfile ENV, Kubernetes env "- name:", ConfigMap/compose keys, *.env files) must occur
as a string in one of the binaries that the same file (YAML: the same document) invokes, or in
any of the three when the file invokes none: the binaries read them with getenv.

The files are those under the deploy/ directory of the runfiles, plus those of the source tree
this file links to that Bazel did not bring (deploy/docker and deploy/k8s are packages of their
own and export only some files; a change to the others alone does not re-run a cached test).

Every problem is printed as FILE:LINE: ... and the test fails. Before that, a self-test runs the
same checks over fabricated files with a bogus flag and a bogus variable in each format and
requires every one of them to be reported, and nothing in the fabricated good files.

usage: flags_test.py --coordinator=BIN --worker=BIN --cli=BIN [--deploy_dir=DIR]
                     [--self_test_only | --no_self_test] [-v]
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

COORDINATOR = "sigmatune-coordinator"
WORKER = "sigmatune-worker"
CLI = "sigmatune"
BINARIES = (COORDINATOR, WORKER, CLI)

# absl's own flags, which --helpfull does not list under a file.
ABSL_BUILTIN = {"help": False, "helpfull": False, "helpshort": False, "helppackage": False,
                "version": False, "only_check_args": False, "helpon": True, "helpmatch": True}

OPERATORS = {";", ";;", "&", "&&", "|", "||", "(", ")", "{", "}", "<", ">", ">>", "<<", "<<<",
             ">&", "<&", "|&", "&>", "&>>", "`", "$("}
# Words after which the next word is still a command (their own options are skipped).
KEYWORDS = {"then", "do", "else", "elif", "if", "while", "until", "!", "time", "exec", "command",
            "nohup", "setsid", "builtin", "xargs", "stdbuf", "sudo", "env", "nice", "timeout"}
# Commands that start another program somewhere among their arguments: in their segment a
# sigmatune-coordinator / sigmatune-worker word is an invocation.
LAUNCHERS = {"mpirun", "mpiexec", "orterun", "srun", "prun", "tini", "dumb-init", "gosu", "su-exec",
             "numactl", "taskset", "chrt", "ionice", "valgrind", "gdb", "strace", "ltrace", "perf",
             "nsys", "ncu", "ssh", "pdsh", "clush", "parallel", "flock", "runuser", "chroot", "unshare",
             "nsenter", "catchsegv"}
# Options whose value names a container, host, job or network, not a program.
NAME_OPTIONS = {"--name", "--hostname", "-h", "--network", "--net", "--network-alias", "--alias",
                "-J", "--job-name", "--container-name", "-l", "--selector", "-n", "--namespace"}


class Finding:
    def __init__(self, path, line, message, key):
        self.path, self.line, self.message, self.key = path, line, message, key

    def __str__(self):
        return f"{self.path}:{self.line}: {self.message}"


# ---------------------------------------------------------------------------------------------
# What the binaries accept.


class Binary:
    """Flags (name -> takes a value) and the bytes of one of our binaries."""

    def __init__(self, name, path):
        self.name = name
        self.path = path
        with open(path, "rb") as f:
            self.data = f.read()
        self.flags = {}  # absl: name -> takes_value
        self.bool_flags = set()
        self.global_flags = {}  # CLI: name -> takes_value
        self.command_flags = {}  # CLI: command -> {name: takes_value}
        if name == CLI:
            self._load_cli()
        else:
            self._load_absl()

    def _help(self, arg):
        out = subprocess.run([self.path, arg], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=60, env=dict(os.environ, TERM="dumb"))
        return out.stdout.decode("utf-8", "replace")

    def _load_absl(self):
        text = self._help("--helpfull")
        for m in re.finditer(r"^\s+--(\w+) \((.*?)\);\s+default: (.*?);$", text, re.M | re.S):
            name, default = m.group(1), m.group(3).strip()
            is_bool = default in ("true", "false")
            self.flags[name] = not is_bool
            if is_bool:
                self.bool_flags.add(name)
        if len(self.flags) < 5:
            raise SystemExit(f"FAIL: could not read the flags of {self.path} from --helpfull:\n{text}")
        for name, takes in ABSL_BUILTIN.items():
            self.flags.setdefault(name, takes)
            if not takes:
                self.bool_flags.add(name)

    def _load_cli(self):
        text = self._help("--help")
        section = None
        for line in text.splitlines():
            header = re.match(r"^(\w+) flags:$", line)
            if line.startswith("commands:"):
                section = "commands"
                continue
            if header:
                section = header.group(1)
                if section != "global":
                    self.command_flags.setdefault(section, {})
                continue
            if not line.strip():
                if section == "commands":
                    section = None
                continue
            if section == "commands":
                m = re.match(r"^  (\w+)\b", line)
                if m:
                    self.command_flags.setdefault(m.group(1), {})
            elif section:
                m = re.match(r"^\s+--(\w+)(=\S+)?", line)
                if m:
                    target = self.global_flags if section == "global" else self.command_flags[section]
                    target[m.group(1)] = bool(m.group(2))
        if not self.global_flags or "submit" not in self.command_flags:
            raise SystemExit(f"FAIL: could not read the commands and flags of {self.path} from --help:\n{text}")
        self.command_flags.setdefault("help", {})
        self.global_flags.setdefault("help", False)

    def reads_env(self, name):
        return re.search(rb"(?<![A-Za-z0-9_])" + re.escape(name.encode()) + rb"(?![A-Za-z0-9_])",
                         self.data) is not None

    def takes_value(self, flag, command=None):
        if self.name != CLI:
            return self.flags.get(flag, False)
        if flag in self.global_flags:
            return self.global_flags[flag]
        tables = [self.command_flags.get(command, {})] if command in self.command_flags else \
            list(self.command_flags.values())
        return any(t.get(flag, False) for t in tables)

    def problem(self, flag, command=None):
        """None if `flag` is accepted (with `command` for the CLI), else why not."""
        if self.name != CLI:
            if flag in self.flags:
                return None
            if flag.startswith("no") and flag[2:] in self.bool_flags:
                return None
            return f"{self.name} has no flag --{flag} (it has: {', '.join(sorted(self.flags))})"
        if flag in self.global_flags:
            return None
        if command in self.command_flags:
            if flag in self.command_flags[command]:
                return None
            allowed = sorted(set(self.global_flags) | set(self.command_flags[command]))
            return f"`{CLI} {command}` has no flag --{flag} (it has: {', '.join(allowed)})"
        if any(flag in t for t in self.command_flags.values()):
            return None  # the command is not known here (a variable): any command's flag is fine
        return f"{CLI} has no flag --{flag} in any command"


# ---------------------------------------------------------------------------------------------
# Shell.


def binary_in_word(word):
    """The binary a word names (a path or a bare name), or None."""
    w = word.strip("\"'`")
    w = re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", w)  # ${VAR:-/usr/bin/sigmatune-worker}
    base = w.rsplit("/", 1)[-1]
    return base if base in BINARIES else None


def strip_comment(line):
    """The line without a trailing shell comment (a # that starts a word, outside quotes)."""
    quote = None
    prev = " "
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"':
                pass
        elif c in "'\"":
            quote = c
        elif c == "#" and (prev.isspace() or prev in ";&|("):
            return line[:i]
        prev = c
    return line


def tokenize(text):
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes (prose): words as they are
        return text.split()


def logical_lines(lines, first_line=1):
    """(line number, text) of logical lines: backslash continuations and multi-line `name=(`
    arrays joined; heredoc bodies come out as their own lines."""
    out = []
    i = 0
    while i < len(lines):
        start = i
        text = lines[i].rstrip("\n")
        if text.lstrip().startswith("#"):
            out.append((first_line + start, text, first_line + start))
            i += 1
            continue
        text = strip_comment(text)
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + strip_comment(lines[i].rstrip("\n"))
        if re.search(r"\b\w+\+?=\(", text) and text.count("(") > text.count(")"):
            while text.count("(") > text.count(")") and i + 1 < len(lines):
                i += 1
                text += " " + strip_comment(lines[i].rstrip("\n")).rstrip("\\")
        out.append((first_line + start, text, first_line + i))
        i += 1
    return out


class ShellScanner:
    """Finds invocations and environment variables in shell text."""

    def __init__(self, checker, path, lines, first_line=1):
        self.checker = checker
        self.path = path
        self.lines = lines
        self.first_line = first_line
        self.logical = logical_lines(lines, first_line)
        self.span_end = {start: end for start, _, end in self.logical}
        self.arrays = {}  # name -> [(token, line)]
        self.vars = {}  # name -> binary
        self.binaries_used = set()
        self._collect_definitions()

    def _collect_definitions(self):
        for line_no, text, _ in self.logical:
            if text.lstrip().startswith("#"):
                continue
            for m in re.finditer(r"(?:^|[\s;&|(])(?:local\s+|declare\s+-a\s+|readonly\s+)?(\w+)(\+?)=\((.*)", text):
                name, body = m.group(1), m.group(3)
                depth, end = 1, None
                for k, c in enumerate(body):
                    if c == "(":
                        depth += 1
                    elif c == ")":
                        depth -= 1
                        if depth == 0:
                            end = k
                            break
                items = self.placed(tokenize(body[:end] if end is not None else body), line_no)
                # name=(...) starts another definition (e.g. one per branch of a case), name+=(...)
                # extends the latest one.
                definitions = self.arrays.setdefault(name, [])
                if m.group(2) == "+" and definitions:
                    definitions[-1].extend(items)
                else:
                    definitions.append(list(items))
            for m in re.finditer(r"(?:^|[\s;&|(])(?:local\s+|readonly\s+|declare\s+\S+\s+)?(\w+)=(\S.*)", text):
                rhs = m.group(2)
                if rhs.startswith("("):
                    continue
                for word in re.findall(r"[\w./${}:-]+", rhs):
                    b = binary_in_word(word.rstrip(")}\"'"))
                    if b:
                        self.vars[m.group(1)] = b
                        break

    def placed(self, tokens, line_no):
        """[(token, physical line)]: each token of the logical line starting at line_no placed on
        the physical line where its text (up to a quote or $) first appears, in order."""
        end = self.span_end.get(line_no, line_no)
        row, col = line_no, 0
        out = []
        for tok in tokens:
            key = re.split(r"[\"'$\\]", tok)[0][:24]
            r, c = row, col
            while key and r <= end:
                k = r - self.first_line
                text = self.lines[k] if 0 <= k < len(self.lines) else ""
                at = text.find(key, c)
                if at >= 0:
                    row, col = r, at + len(key)
                    break
                r, c = r + 1, 0
            out.append((tok, row))
        return out

    def expand(self, tokens, depth=0):
        """Tokens with "${array[@]}" replaced by the array's items (recursively); an array defined
        more than once (in different branches) expands to each definition, separated by ";"."""
        out = []
        for tok, line in tokens:
            m = re.fullmatch(r"\$\{(\w+)\[[@*]\]\}", tok)
            if m and m.group(1) in self.arrays and depth < 8:
                for k, definition in enumerate(self.arrays[m.group(1)]):
                    if k > 0:
                        out.append((";", line))
                    out.extend(self.expand(definition, depth + 1))
            else:
                out.append((tok, line))
        return out

    def binary_of(self, tok):
        b = binary_in_word(tok)
        if b:
            return b
        m = re.fullmatch(r"\$\{?(\w+)\}?", tok)
        if m and m.group(1) in self.vars:
            return self.vars[m.group(1)]
        return None

    def scan(self):
        for line_no, text, _ in self.logical:
            stripped = text.lstrip()
            if stripped.startswith("#"):
                if stripped.startswith("#SBATCH"):
                    self.env_in_text(stripped[1:], line_no)
                continue
            if re.match(r"^\s*(local\s+|declare\s+-a\s+|readonly\s+)?\w+\+?=\(", text):
                # An array definition: its items are checked where the array is expanded (and
                # here when it names a binary itself, e.g. command=(sigmatune-worker --job x)).
                items = self.expand(self.placed(tokenize(text.split("(", 1)[1].rsplit(")", 1)[0]), line_no))
                if any(self.binary_of(t) for t, _ in items):
                    self.scan_tokens(items, command_position=True)
                self.env_in_text(text, line_no)
                continue
            self.scan_text(text, line_no)
        return self.binaries_used

    def scan_text(self, text, line_no):
        self.env_in_text(text, line_no)
        tokens = self.expand(self.placed(tokenize(text), line_no))
        self.scan_tokens(tokens, command_position=True)

    def env_in_text(self, text, line_no):
        c = self.checker
        for m in re.finditer(r"(?:^|\s)-x\s+[\"']?(SIGMATUNE_[A-Z0-9_]+)", text):
            c.env_given(self.path, line_no, m.group(1))
        for m in re.finditer(r"(?:^|[\s;&|(])(?:export|declare\s+-\w*x\w*|typeset\s+-\w*x\w*)\s+([^;&|]*)", text):
            for name in re.findall(r"(?<![\w${])(SIGMATUNE_[A-Z0-9_]+)(?==|\s|$)", m.group(1)):
                c.env_given(self.path, line_no, name)
        for m in re.finditer(r"--export[=\s]+([^\s;&|]+)", text):
            for item in m.group(1).strip("\"'").split(","):
                name = item.split("=", 1)[0]
                if name.startswith("SIGMATUNE_"):
                    c.env_given(self.path, line_no, name)
        for m in re.finditer(r"(?:^|\s)(?:-e|--env)[=\s]+[\"']?(SIGMATUNE_[A-Z0-9_]+)", text):
            c.env_given(self.path, line_no, m.group(1))

    def scan_tokens(self, tokens, command_position):
        """Invocations in a token list. sigmatune (the CLI) counts where a command starts; the other
        two where a command starts or anywhere in the segment of a launcher (mpirun, srun, docker
        run, kubectl exec, ...), except as the value of a name option (docker run --name X)."""
        i, n = 0, len(tokens)
        at_cmd = command_position
        launcher = False
        while i < n:
            tok, line = tokens[i]
            if tok in OPERATORS or tok.endswith("=$"):
                at_cmd, launcher = True, False
                i += 1
                continue
            if tok == "--":
                at_cmd = True
                i += 1
                continue
            # A quoted string or $(...) holding an invocation: scan its text as shell.
            if (" " in tok or "\n" in tok) and any(b in tok for b in BINARIES):
                inner = tok
                if inner.startswith("$(") and inner.endswith(")"):
                    inner = inner[2:-1]
                for k, part in enumerate(inner.split("\n")):
                    self.scan_text(part, line + k if "\n" in tok else line)
                at_cmd = False
                i += 1
                continue
            b = self.binary_of(tok)
            named = i > 0 and tokens[i - 1][0] in NAME_OPTIONS
            if b and not named and (at_cmd or (launcher and b != CLI)):
                self.binaries_used.add(b)
                i = self.checker.check_invocation(self.path, b, tokens, i + 1)
                at_cmd = False
                continue
            if at_cmd:
                assign = re.fullmatch(r"(\w+)=.*", tok, re.S)
                if assign:
                    if assign.group(1).startswith("SIGMATUNE_") and i + 1 < n and tokens[i + 1][0] not in OPERATORS:
                        self.checker.env_given(self.path, line, assign.group(1))
                    i += 1
                    continue
                if tok in KEYWORDS:
                    i += 1
                    i = self._skip_wrapper_options(tok, tokens, i)
                    continue
                if tok == "ip" and [t for t, _ in tokens[i + 1:i + 3]] == ["netns", "exec"]:
                    i += 4
                    continue
                word = tok.rsplit("/", 1)[-1]
                following = [t for t, _ in tokens[i + 1:i + 3]]
                launcher = word in LAUNCHERS or (
                    word in ("docker", "podman", "nerdctl") and bool(following) and following[0] in ("run", "exec", "container")) or (
                    word in ("kubectl", "oc") and "exec" in following)
                at_cmd = False
            i += 1

    @staticmethod
    def _skip_wrapper_options(word, tokens, i):
        """Past the options of a wrapper command (timeout -k 5 60, sudo -u x, nice -n 5, srun ...)."""
        valued = {"timeout": {"-k", "-s", "--kill-after", "--signal"}, "sudo": {"-u", "-g"},
                  "nice": {"-n"}, "env": {"-u"}, "xargs": {"-n", "-I", "-P"}}.get(word, set())
        n = len(tokens)
        while i < n and tokens[i][0].startswith("-") and tokens[i][0] != "--":
            i += 2 if tokens[i][0] in valued else 1
        if word == "timeout" and i < n and re.fullmatch(r"[\d.]+[smhd]?", tokens[i][0]):
            i += 1
        return i


# ---------------------------------------------------------------------------------------------
# YAML (a line-based reading of the parts that matter; no YAML library).


def indent_of(line):
    return len(line) - len(line.lstrip(" "))


def yaml_scalar(text):
    text = text.strip()
    if text.startswith('"'):
        try:
            return json.loads(text)
        except ValueError:
            return text.strip('"')
    if text.startswith("'"):
        return text[1:-1].replace("''", "'") if text.endswith("'") and len(text) > 1 else text[1:]
    return re.sub(r"\s+#.*$", "", text)


def split_flow(text):
    """Items of a YAML flow sequence body ("a", 'b', c)."""
    items, cur, quote, i = [], "", None, 0
    while i < len(text):
        c = text[i]
        if quote:
            cur += c
            if c == "\\" and quote == '"' and i + 1 < len(text):
                cur += text[i + 1]
                i += 1
            elif c == quote:
                if quote == "'" and i + 1 < len(text) and text[i + 1] == "'":
                    cur += "'"
                    i += 1
                else:
                    quote = None
        elif c in "'\"" and not cur.strip():
            quote = c
            cur += c
        elif c == ",":
            items.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    if cur.strip():
        items.append(cur)
    return [yaml_scalar(x) for x in items]


def block_scalar(lines, start, parent_indent, style):
    """(text, next index) of a | or > block scalar whose lines follow lines[start - 1]."""
    body, i = [], start
    while i < len(lines):
        raw = lines[i].rstrip("\n")
        if raw.strip() and indent_of(raw) <= parent_indent:
            break
        body.append(raw)
        i += 1
    if not body:
        return "", i
    ind = min((indent_of(b) for b in body if b.strip()), default=0)
    body = [b[ind:] for b in body]
    if style.startswith(">"):
        return " ".join(b.strip() for b in body), i
    return "\n".join(body), i


def yaml_sequence(lines, i, key_col, value):
    """Items [(text, line number)] of the sequence that starts on lines[i] (a key with `value`)."""
    line_no = i + 1
    value = value.strip()
    if value.startswith("["):
        text, j = value, i
        while text.count("[") > text.count("]") and j + 1 < len(lines):
            j += 1
            text += " " + lines[j].strip()
        body = text[text.index("[") + 1:text.rindex("]")] if "]" in text else text[1:]
        return [(item, line_no) for item in split_flow(body)]
    if value and value[0] in "|>":
        text, _ = block_scalar(lines, i + 1, key_col, value)
        return [(text, line_no + 1)]
    if value:
        return [(yaml_scalar(value), line_no)]
    items, j = [], i + 1
    while j < len(lines):
        raw = lines[j].rstrip("\n")
        if not raw.strip() or raw.lstrip().startswith("#"):
            j += 1
            continue
        ind = indent_of(raw)
        stripped = raw.strip()
        if ind < key_col or (ind == key_col and not stripped.startswith("- ") and stripped != "-"):
            break
        if stripped.startswith("-") and (stripped == "-" or stripped[1] == " "):
            item = stripped[1:].strip()
            if item[:1] in ("|", ">"):
                item_index = j
                text, j = block_scalar(lines, j + 1, ind, item)
                items.append((text, item_index + 2))  # the first line of the scalar's body
                continue
            if item.startswith('"') and not re.search(r'(?<!\\)"\s*$', item[1:]):
                k = j
                while k + 1 < len(lines) and not re.search(r'(?<!\\)"\s*$', item[1:]):
                    k += 1
                    item += " " + lines[k].strip()
                items.append((yaml_scalar(item), j + 1))
                j = k + 1
                continue
            items.append((yaml_scalar(item), j + 1))
        j += 1
    return items


def mapping_span(lines, i, key_col):
    """[start, end) of the mapping that holds the key on line i at column key_col."""
    start = i
    while start > 0:
        raw = lines[start - 1].rstrip("\n")
        if raw.strip() and not raw.lstrip().startswith("#"):
            ind = indent_of(raw)
            if ind < key_col:
                if raw.strip().startswith("- ") and ind + 2 == key_col:
                    start -= 1
                break
        start -= 1
    end = i + 1
    while end < len(lines):
        raw = lines[end].rstrip("\n")
        if raw.strip() and not raw.lstrip().startswith("#"):
            ind = indent_of(raw)
            if ind < key_col or (ind == key_col - 2 and raw.strip().startswith("- ")):
                break
        end += 1
    return start, end


KEY_RE = re.compile(r"^(\s*)(- +)?([A-Za-z_][\w.-]*):(\s+(.*))?$")


def scan_yaml(checker, path, lines, first_line=1):
    # Documents, so that env variables are checked against the binaries of their own document.
    docs, cur = [], []
    for k, raw in enumerate(lines):
        if raw.startswith("---"):
            docs.append(cur)
            cur = []
        else:
            cur.append(k)
    docs.append(cur)
    used_all = set()
    pending_env = []
    for doc in docs:
        if not doc:
            continue
        used = set()
        env = []
        offset = doc[0]
        doc_lines = [lines[k] for k in doc]
        groups = {}
        for i, raw in enumerate(doc_lines):
            m = KEY_RE.match(raw.rstrip("\n"))
            if not m:
                continue
            key_col = len(m.group(1)) + len(m.group(2) or "")
            key, value = m.group(3), (m.group(5) or "")
            if key in ("command", "args", "entrypoint"):
                span = mapping_span(doc_lines, i, key_col)
                groups.setdefault((span, key_col), {})[key] = yaml_sequence(doc_lines, i, key_col, value)
        for ((start, end), key_col), keys in sorted(groups.items()):
            argv = []
            for key in ("entrypoint", "command", "args"):
                argv.extend((text, (ln or 1) + offset + first_line - 1) for text, ln in keys.get(key, []))
            if not argv:
                continue
            siblings = " ".join(
                (m.group(5) or "") for m in (KEY_RE.match(doc_lines[k].rstrip("\n")) for k in range(start, end))
                if m and len(m.group(1)) + len(m.group(2) or "") == key_col and m.group(3) in ("image", "name"))
            used |= checker.check_argv(path, argv, siblings)
        for i, raw in enumerate(doc_lines):
            line_no = i + offset + first_line
            for pattern in (r"(?:^|[\s{,-])name:\s*[\"']?(SIGMATUNE_[A-Z0-9_]+)\b",  # env: - name: X / {name: X}
                            r"^\s*[\"']?(SIGMATUNE_[A-Z0-9_]+)[\"']?\s*:",  # ConfigMap data, compose map
                            r"^\s*-\s*[\"']?(SIGMATUNE_[A-Z0-9_]+)="):  # compose list
                m = re.search(pattern, raw.rstrip("\n"))
                if m:
                    env.append((line_no, m.group(1)))
                    break
        pending_env.append((used, env))
        used_all |= used
    for used, env in pending_env:
        for line_no, name in env:
            checker.env_given(path, line_no, name, used or used_all or None)
    return used_all


# ---------------------------------------------------------------------------------------------
# Dockerfiles.


def scan_dockerfile(checker, path, lines, first_line=1):
    instructions = []  # (line, instruction, argument text)
    i = 0
    while i < len(lines):
        raw = lines[i].rstrip("\n")
        if not raw.strip() or raw.lstrip().startswith("#"):
            i += 1
            continue
        start, text = i, raw
        while text.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            nxt = lines[i].rstrip("\n")
            if nxt.lstrip().startswith("#"):
                continue
            text = text.rstrip()[:-1] + " " + nxt
        m = re.match(r"^\s*(\w+)\s+(.*)$", text, re.S)
        if m:
            instructions.append((start + first_line, m.group(1).upper(), m.group(2).strip()))
        i += 1
    used = set()
    env = []
    entrypoint = []
    for line_no, inst, arg in instructions:
        if inst == "FROM":
            entrypoint = []
        elif inst == "ENV":
            for name in re.findall(r"(?:^|\s)(SIGMATUNE_[A-Z0-9_]+)(?==|\s|$)", arg):
                env.append((line_no, name))
        elif inst in ("RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK"):
            if inst == "HEALTHCHECK":
                m = re.search(r"\bCMD\s+(.*)$", arg, re.S)
                if not m:
                    continue
                arg = m.group(1).strip()
            if inst == "RUN":
                arg = re.sub(r"^(--\S+\s+)+", "", arg)
            argv = None
            if arg.startswith("["):
                try:
                    argv = [(str(x), line_no) for x in json.loads(arg)]
                except ValueError:
                    argv = None
            if argv is None:
                scanner = ShellScanner(checker, path, [arg], line_no)
                used |= scanner.scan()
                if inst == "ENTRYPOINT":
                    entrypoint = [(t, line_no) for t in tokenize(arg)]
                continue
            if inst == "ENTRYPOINT":
                entrypoint = argv
            if inst == "CMD" and entrypoint and not any(binary_in_word(t) for t, _ in argv):
                argv = entrypoint + argv
            used |= checker.check_argv(path, argv, "")
    for line_no, name in env:
        checker.env_given(path, line_no, name, used or None)
    return used


# ---------------------------------------------------------------------------------------------
# Markdown code blocks and .env files.


def scan_markdown(checker, path, lines):
    i = 0
    used = set()
    blocks = []  # (kind, first line number, lines)
    while i < len(lines):
        raw = lines[i].rstrip("\n")
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", raw)
        if fence:
            lang = fence.group(2).lower()
            body, j = [], i + 1
            while j < len(lines) and not lines[j].lstrip().startswith(fence.group(1)):
                body.append(lines[j])
                j += 1
            kind = "yaml" if lang in ("yaml", "yml") else "docker" if lang in ("dockerfile", "docker") else \
                "skip" if lang in ("json", "text", "txt", "python", "py", "cpp", "c++", "proto") else "shell"
            blocks.append((kind, i + 2, body))
            i = j + 1
            continue
        if raw.startswith("    ") and (i == 0 or not lines[i - 1].strip() or lines[i - 1].startswith("    ")):
            body, j = [], i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                body.append(lines[j][4:] if lines[j].startswith("    ") else lines[j])
                j += 1
            blocks.append(("shell", i + 1, body))
            i = j
            continue
        i += 1
    for kind, first, body in blocks:
        if kind == "yaml":
            used |= scan_yaml(checker, path, body, first)
        elif kind == "docker":
            used |= scan_dockerfile(checker, path, body, first)
        elif kind == "shell":
            used |= ShellScanner(checker, path, body, first).scan()
    return used


def scan_env_file(checker, path, lines):
    for k, raw in enumerate(lines):
        m = re.match(r"^\s*(?:export\s+)?(SIGMATUNE_[A-Z0-9_]+)=", raw)
        if m:
            checker.env_given(path, k + 1, m.group(1))
    return set()


# ---------------------------------------------------------------------------------------------


class Checker:
    def __init__(self, binaries, verbose=False):
        self.binaries = binaries  # name -> Binary
        self.findings = []
        self.seen = set()
        self.invocations = []  # (path, binary, line)
        self.env_checked = []
        self.notes = []
        self.verbose = verbose
        self.file_binaries = set()  # binaries invoked in the file being scanned
        self.env_pending = []

    def report(self, path, line, message, key):
        if (path, line, key) in self.seen:
            return
        self.seen.add((path, line, key))
        self.findings.append(Finding(path, line, message, key))

    def check_invocation(self, path, binary, tokens, j):
        """Checks the flags in tokens[j:] given to `binary`; returns the index after them."""
        b = self.binaries[binary]
        line0 = tokens[j - 1][1]
        self.invocations.append((path, binary, line0))
        flags = []  # (name, line)
        command = None
        command_line = line0
        n = len(tokens)
        while j < n:
            tok, line = tokens[j]
            if tok in OPERATORS:
                break
            last = tok.endswith("`")
            norm = tok.strip("`").lstrip("[(").rstrip("]),.;:")
            if norm == "--":
                break
            if re.fullmatch(r"-{1,2}[A-Za-z][\w-]*(=.*)?", norm, re.S):
                name, eq, _ = norm.lstrip("-").partition("=")
                flags.append((name, line))
                if not eq and b.takes_value(name, command) and j + 1 < n and tokens[j + 1][0] not in OPERATORS:
                    j += 1
            elif binary == CLI and command is None and not norm.startswith("-") and norm:
                command, command_line = norm, line
            j += 1
            if last:
                break
        if binary == CLI and command is not None and re.fullmatch(r"[a-z]+", command):
            if command not in b.command_flags:
                self.report(path, command_line,
                            f"{CLI} has no command '{command}' (it has: {', '.join(sorted(b.command_flags))})",
                            ("command", command))
                command = None
        elif binary == CLI:
            command = None
        if self.verbose:
            print(f"  {path}:{line0}: {binary}" + (f" {command}" if command else "") +
                  "".join(f" --{name}" for name, _ in flags))
        for name, line in flags:
            why = b.problem(name, command)
            if why:
                self.report(path, line, why, ("flag", binary, name))
        self.file_binaries.add(binary)
        return j

    def check_argv(self, path, argv, siblings):
        """An exec-form argument list [(text, line)]: invocations in it, or args for the binary the
        container's image/name names."""
        used = set()
        found = False
        for k, (text, line) in enumerate(argv):
            if ("\n" in text or " " in text) and any(b in text for b in BINARIES):
                scanner = ShellScanner(self, path, text.split("\n"), line)
                used |= scanner.scan()
                found = True
                continue
            env = re.match(r"(SIGMATUNE_[A-Z0-9_]+)", text)
            if env and k > 0 and argv[k - 1][0] in ("-x", "-e", "--env"):
                self.env_pending.append((path, line, env.group(1)))
        tokens = [(text, line) for text, line in argv
                  if not (("\n" in text or " " in text) and any(b in text for b in BINARIES))]
        scanner = ShellScanner(self, path, [], 1)
        scanner.scan_tokens(tokens, command_position=True)
        if scanner.binaries_used:
            used |= scanner.binaries_used
            found = True
        if not found and argv and argv[0][0].startswith("-"):
            names = [b for b, word in ((COORDINATOR, "coordinator"), (WORKER, "worker")) if word in siblings]
            if len(names) == 1:
                self.check_invocation(path, names[0], [("<image entrypoint>", argv[0][1])] + tokens, 1)
                used.add(names[0])
            else:
                self.notes.append(f"{path}:{argv[0][1]}: args without a command, and the container's image/name "
                                  f"({siblings.strip() or 'none'}) names no single binary: not checked")
        self.file_binaries |= used
        return used

    def env_given(self, path, line, name, binaries=None):
        self.env_pending.append((path, line, name) if binaries is None else (path, line, name, binaries))

    def flush_env(self, path):
        """Checks the variables given in `path` against the binaries it invokes."""
        for entry in self.env_pending:
            p, line, name = entry[:3]
            targets = entry[3] if len(entry) > 3 else (self.file_binaries or set(BINARIES))
            self.env_checked.append((p, line, name))
            if not any(self.binaries[t].reads_env(name) for t in targets):
                readers = sorted({n for t in targets for n in re.findall(rb"SIGMATUNE_[A-Z0-9_]+", self.binaries[t].data)
                                  if re.fullmatch(rb"SIGMATUNE_[A-Z0-9_]*[A-Z0-9]", n)})
                self.report(p, line, f"{name} is given to {', '.join(sorted(targets))}, which never read it "
                                     f"(they read: {', '.join(r.decode() for r in readers) or 'none'})",
                            ("env", name))
        self.env_pending = []
        self.file_binaries = set()


def kind_of(path):
    base = os.path.basename(path)
    if base == "BUILD" or base.endswith((".py", ".bzl", ".pyc")):
        return None
    if base.startswith(("Dockerfile", "Containerfile")) or base.endswith((".dockerfile", ".Dockerfile")):
        return "docker"
    if base.endswith((".yaml", ".yml", ".yaml.tpl", ".yml.tpl")):
        return "yaml"
    if base.endswith(".md"):
        return "markdown"
    if base.endswith(".env") or base == ".env":
        return "env"
    if base.endswith((".sh", ".bash", ".sbatch", ".slurm")):
        return "shell"
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
    except OSError:
        return None
    if re.match(rb"#!.*\b(ba|z|k|da)?sh\b", first):
        return "shell"
    return None


def scan_file(checker, path, display):
    kind = kind_of(path)
    if kind is None:
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    if kind == "shell":
        ShellScanner(checker, display, lines).scan()
    elif kind == "yaml":
        scan_yaml(checker, display, lines)
    elif kind == "docker":
        scan_dockerfile(checker, display, lines)
    elif kind == "markdown":
        scan_markdown(checker, display, lines)
    elif kind == "env":
        scan_env_file(checker, display, lines)
    checker.flush_env(display)
    return kind


def scan_tree(checker, root, display_prefix):
    scanned = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            display = os.path.join(display_prefix, os.path.relpath(path, root))
            kind = scan_file(checker, path, display)
            if kind:
                scanned.append((display, kind))
    return scanned


# ---------------------------------------------------------------------------------------------
# Self-test: fabricated files with known mistakes.

SELF_TEST_FILES = {
    "bad.sh": """#!/usr/bin/env bash
set -euo pipefail
export SIGMATUNE_BOGUS_VAR=1
mpirun -np 2 -x SIGMATUNE_TOKEN -x SIGMATUNE_NOT_READ \\
  sigmatune-worker --coordinator=host:50051 --bogus_flag=1
worker="${WORKER:-/opt/bin/sigmatune-worker}"
worker_args=(--comm=mpi --job spec.yaml)
worker_args+=(--not_a_worker_flag)
"$worker" "${worker_args[@]}"
sigmatune --server=h:1 list --watch
out="$(sigmatune-coordinator --listen 0.0.0.0:1 --no_such_coordinator_flag)"
sigmatune frobnicate jobs/x
""",
    "good.sh": """#!/usr/bin/env bash
# Valid invocations in every form the scanner understands; nothing here may be reported.
set -euo pipefail
export SIGMATUNE_TOKEN
SIGMATUNE_SERVER=h:1 sigmatune list --state=running --all
mpirun -np 2 --bind-to none -x SIGMATUNE_TOKEN sigmatune-worker --coordinator h:1 --tls_ca ca.pem --quiet
bin="$(command -v sigmatune-coordinator || true)"
args=(--listen="0.0.0.0:1" --data_root /srv)
args+=(--tenants_file=/etc/t.txt)
command=("$bin" "${args[@]}")
exec "${command[@]}"
timeout 10 sigmatune --server h:1 submit spec.yaml --watch --priority 3
ip netns exec ns1 sigmatune get jobs/abc --json
sigmatune-worker --noquiet --helpfull
useradd --system --home /var/lib/sigmatune sigmatune --shell /bin/false
srun --export=ALL,SIGMATUNE_TOKEN --mpi=pmix bash -c 'exec sigmatune-worker --comm=mpi --job "$1"' _ spec.yaml
worker=/opt/bin/sigmatune-worker
case "$launcher" in
  mpirun) launch=(mpirun -np 2 "$worker" --job x.yaml) ;;
  srun) launch=(srun --mpi=pmix --kill-on-bad-exit=1 "$worker" --job x.yaml) ;;
esac
"${launch[@]}"
docker run --name sigmatune-coordinator --network sigmatune -p 1:1 image sigmatune-coordinator --listen=0.0.0.0:1
kubectl logs deploy/sigmatune-coordinator -f
""",
    "bad.yaml": """apiVersion: apps/v1
kind: Deployment
spec:
  template:
    spec:
      containers:
        - name: coordinator
          image: example/sigmatune:latest
          command: ["sigmatune-coordinator"]
          args:
            - --listen
            - 0.0.0.0:50051
            - "--not_a_flag=1"
          env:
            - name: SIGMATUNE_FAKE
              value: "1"
            - {name: SIGMATUNE_FAKE_FLOW, value: "1"}
        - name: worker
          image: example/sigmatune:latest
          command: ["/bin/sh", "-c"]
          args:
            - |
              exec mpirun -np 2 sigmatune-worker \\
                --coordinator=coordinator:50051 --bogus2
---
apiVersion: v1
kind: Pod
spec:
  containers:
    - name: sigmatune-worker
      image: example/sigmatune:latest
      args: ["--coordinator=c:1", "--bogus3"]
""",
    "good.yaml": """apiVersion: v1
kind: Pod
spec:
  containers:
    - name: coordinator
      command:
        - sigmatune-coordinator
        - --listen=0.0.0.0:50051
        - --data_root
        - /data
      env:
        - name: SIGMATUNE_TOKEN
          valueFrom: {secretKeyRef: {name: t, key: token}}
    - name: cli
      command: ["sh", "-c", "sigmatune --server=c:1 list --all"]
""",
    "Dockerfile": """FROM debian:12
ENV SIGMATUNE_FAKE2=1 PATH=/usr/local/bin:$PATH
ENTRYPOINT ["sigmatune-coordinator"]
CMD ["--listen=0.0.0.0:50051", "--bogus4"]
HEALTHCHECK CMD sigmatune --server=127.0.0.1:50051 list --bogus5 || exit 1
""",
    "README.md": """# fabricated

    sigmatune-worker --job spec.yaml --bogus6

```yaml
command: ["sigmatune-coordinator", "--bogus7"]
```
""",
}

# (file, line, key) every one of which the self-test must report.
SELF_TEST_EXPECTED = [
    ("bad.sh", 3, ("env", "SIGMATUNE_BOGUS_VAR")),
    ("bad.sh", 4, ("env", "SIGMATUNE_NOT_READ")),
    ("bad.sh", 5, ("flag", WORKER, "bogus_flag")),
    ("bad.sh", 8, ("flag", WORKER, "not_a_worker_flag")),
    ("bad.sh", 10, ("flag", CLI, "watch")),
    ("bad.sh", 11, ("flag", COORDINATOR, "no_such_coordinator_flag")),
    ("bad.sh", 12, ("command", "frobnicate")),
    ("bad.yaml", 13, ("flag", COORDINATOR, "not_a_flag")),
    ("bad.yaml", 15, ("env", "SIGMATUNE_FAKE")),
    ("bad.yaml", 17, ("env", "SIGMATUNE_FAKE_FLOW")),
    ("bad.yaml", 24, ("flag", WORKER, "bogus2")),
    ("bad.yaml", 32, ("flag", WORKER, "bogus3")),
    ("Dockerfile", 2, ("env", "SIGMATUNE_FAKE2")),
    ("Dockerfile", 4, ("flag", COORDINATOR, "bogus4")),
    ("Dockerfile", 5, ("flag", CLI, "bogus5")),
    ("README.md", 3, ("flag", WORKER, "bogus6")),
    ("README.md", 6, ("flag", COORDINATOR, "bogus7")),
]


def self_test(binaries, verbose):
    checker = Checker(binaries, verbose)
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in SELF_TEST_FILES.items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        scan_tree(checker, tmp, "selftest")
    got = {(os.path.basename(f.path), f.line, f.key) for f in checker.findings}
    problems = []
    for expected in SELF_TEST_EXPECTED:
        if expected not in got:
            problems.append(f"not reported: {expected[0]}:{expected[1]}: {expected[2]}")
    for f in checker.findings:
        if os.path.basename(f.path).startswith("good"):
            problems.append(f"reported in a good file: {f}")
    unexpected = got - set(SELF_TEST_EXPECTED) - {(os.path.basename(f.path), f.line, f.key)
                                                  for f in checker.findings if os.path.basename(f.path).startswith("good")}
    for u in sorted(unexpected, key=str):
        problems.append(f"reported but not expected: {u}")
    print(f"self-test: {len(checker.findings)} problems reported in the fabricated files, "
          f"{len(SELF_TEST_EXPECTED)} expected:")
    for f in checker.findings:
        print(f"  {f}")
    if problems:
        print("FAIL: the self-test shows the checker is broken:")
        for p in problems:
            print(f"  {p}")
        return False
    print("self-test: OK (every fabricated bogus flag and variable was reported, nothing in the good files)")
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--cli", required=True)
    parser.add_argument("--deploy_dir", default=None, help="default: the directory of this file")
    parser.add_argument("--self_test_only", action="store_true")
    parser.add_argument("--no_self_test", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()

    binaries = {COORDINATOR: Binary(COORDINATOR, args.coordinator), WORKER: Binary(WORKER, args.worker),
                CLI: Binary(CLI, args.cli)}
    ok = True
    if not args.no_self_test:
        ok = self_test(binaries, args.verbose)
        if args.self_test_only:
            return 0 if ok else 1

    deploy_dir = args.deploy_dir or os.path.dirname(os.path.abspath(__file__))
    checker = Checker(binaries, args.verbose)
    scanned = scan_tree(checker, deploy_dir, "deploy")
    # Files of deploy/ that Bazel did not bring (subpackages such as deploy/k8s with their own BUILD
    # export only some files): read them from the source tree this file links to, so that they
    # are checked too. (A change to them alone does not re-run a cached test: export them and add
    # them to //deploy:flags_test's data to make that so.)
    source_dir = os.path.dirname(os.path.realpath(__file__))
    if args.deploy_dir is None and os.path.realpath(deploy_dir) != source_dir and os.path.isdir(source_dir):
        have = {d for d, _ in scanned}
        extra = []
        for dirpath, dirnames, filenames in os.walk(source_dir):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                display = os.path.join("deploy", os.path.relpath(path, source_dir))
                if display not in have:
                    kind = scan_file(checker, path, display)
                    if kind:
                        scanned.append((display, kind))
                        extra.append(display)
        if extra:
            print(f"note: {len(extra)} file(s) under deploy/ are not in this test's data (not exported by their "
                  f"package); read from {source_dir}: {', '.join(extra)}")
    print(f"\nchecked {len(scanned)} files under deploy/:")
    for display, kind in scanned:
        count = {}
        for p, b, _ in checker.invocations:
            if p == display:
                count[b] = count.get(b, 0) + 1
        envs = sorted({n for p, _, n in checker.env_checked if p == display})
        summary = ", ".join(f"{b} x{c}" for b, c in sorted(count.items())) or "no invocations"
        print(f"  {display} ({kind}): {summary}" + (f"; env {', '.join(envs)}" if envs else ""))
    for note in checker.notes:
        print(f"note: {note}")
    used = {b for _, b, _ in checker.invocations}
    for b in (COORDINATOR, WORKER):
        if b not in used:
            print(f"FAIL: no invocation of {b} found under {deploy_dir}: the scripts are missing or the scanner broke")
            ok = False
    if checker.findings:
        print(f"\nFAIL: {len(checker.findings)} flag(s)/variable(s) that our binaries do not have:")
        for f in checker.findings:
            print(f"  {f}")
        ok = False
    else:
        print(f"\nOK: {len(checker.invocations)} invocations and {len(checker.env_checked)} environment "
              f"variables checked; every flag and variable exists in its binary")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

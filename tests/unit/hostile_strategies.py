"""Hypothesis strategies for job-supplied text, shared by the test_hostile_*.py files.

What can reach the hooks (docs/torque-facts.md): pbs_mom's argv ($1 job id, $2 user, $4 job
name, the resource list with the user's ``-l other=...``), the environment pbs_mom builds
(PBS_O_WORKDIR comes from the submitter), the nodefile a user may alter with
BEOWULF_JOB_MAP, and, for the job starter, the job's whole environment.

argv and environment strings come from C strings, so they never hold NUL; bytes that are
not UTF-8 reach Python as surrogate escapes (U+DC80..U+DCFF). ``ARGV_TEXT`` is exactly
that space; ``ANY_TEXT`` adds NUL and is used where a function claims to handle it.

Every property test takes its budget from ``budget(n)``; BUDGETS records each one so the
total number of hostile inputs tried can be reported (see test_hostile_input.py).
"""
from __future__ import annotations

import re

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: Pieces that break naive parsers, shells, config files and paths.
FRAGMENTS = [
    ",", ";", "=", ":", "'", '"', "\n", "\r", "\t", " ", "$(id)", "`id`", "|", "&", "&&", "||",
    ";rm -rf /;", "$HOME", "${IFS}", "$$", ">", "<", "..", "../", "/..", "/../", "/", "//", "./",
    "-", "--", "-oProxyCommand=x", "*", "?", "[", "]", "[1]", "{", "}", "~", "!", "#", "\\", "%", "@",
    "é", "ünïcödé", "\u0661", "\u01c5", "\u2028", "\u0085", "\x1b[2J", "\x7f", "\x0b", "\x0c", "\ufeff",
    "\udcff", "\udc80", "image=", "mount=", "model=", "run=", "other=", "file:", "/etc/passwd",
    "/var/run/docker.sock", "/proc", "Host *", "ProxyCommand", "root:x:0:0::/:/bin/sh", "td-",
    "localhost", "a", "0", "42.srv",
]

_SURROGATES = re.compile("[\ud800-\udfff]")


# Named functions, not lambdas, in .map()/builds(): hypothesis describes every mapped value's
# function, and describing a lambda means reading its source (most of the run time).
def strip_surrogates(s: str) -> str:
    return _SURROGATES.sub("", s)


def strip_nul(s: str) -> str:
    return s.replace("\0", "")


def no_slash(s: str) -> str:
    return s.replace("/", "")[:20]


def short(s: str) -> str:
    return s[:20]


def _ten_thousand(pair) -> str:
    return pair[1] + (pair[0] * (10000 // len(pair[0]) + 1))[:10000]


def _compose(nul: bool, surrogates: bool) -> st.SearchStrategy[str]:
    pieces = st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4))
    if nul:
        pieces = st.one_of(pieces, st.just("\0"))
    mixed = st.lists(pieces, max_size=12).map("".join)
    long_ = st.tuples(st.sampled_from(FRAGMENTS + ["a", "é", "\0"]), st.sampled_from(FRAGMENTS)).map(_ten_thousand)
    text = st.one_of(mixed, mixed, mixed, mixed, mixed, mixed, st.text(), long_)   # 1 in 8 is 10k long
    if not nul:
        text = text.map(strip_nul)
    if not surrogates:
        text = text.map(strip_surrogates)
    return text


#: What argv and environment strings can hold: anything but NUL; undecodable bytes as surrogates.
ARGV_TEXT = _compose(nul=False, surrogates=True)
#: ARGV_TEXT plus NUL, for functions that promise to handle it.
ANY_TEXT = _compose(nul=True, surrogates=True)

# ---------------------------------------------------------------- the -l other= request
GOOD_IMAGES = ["debian:12", "lab/openfoam:11", "registry.example.org:5000/lab/x:11@sha256:" + "a" * 64,
               "localhost/x", "ubuntu", "openfoam", "file:/images/x.tar", "file:/images/../etc/shadow"]

_path_segment = st.one_of(st.sampled_from(["", ".", "..", "a", "scratch", "data", "etc", "proc", "…", "d\u0661"]),
                          ARGV_TEXT.map(no_slash))


def _absolute(segments) -> str:
    return "/" + "/".join(segments)


def _mount_spec(src, dst, mode) -> str:
    return src + (":" + dst if dst is not None else "") + mode


def _concat(a, b) -> str:
    return a + b


MOUNT_PATHS = st.one_of(
    st.lists(_path_segment, max_size=6).map(_absolute),
    ARGV_TEXT,
)
MOUNT_SPECS = st.builds(
    _mount_spec,
    MOUNT_PATHS, st.none() | MOUNT_PATHS, st.sampled_from(["", ":ro", ":rw", ":RO", ":", ":x"]),
)
_KEYS = st.one_of(st.sampled_from(["image", "model", "run", "mount", "mount", "IMAGE", " image ", "image\t",
                                   "colour", "", "image image"]), ARGV_TEXT.map(short))
_VALUES = {
    "image": st.one_of(st.sampled_from(GOOD_IMAGES), ARGV_TEXT,
                       st.builds(_concat, st.sampled_from(GOOD_IMAGES), ARGV_TEXT)),
    "model": st.one_of(st.sampled_from(["node", "process", "Node", "node "]), ARGV_TEXT),
    "run": st.one_of(st.sampled_from(["container", "host", ""]), ARGV_TEXT),
    "mount": st.one_of(MOUNT_SPECS, ARGV_TEXT),
}


@st.composite
def _pair(draw) -> str:
    key = draw(_KEYS)
    value = draw(_VALUES.get(key.strip(), ARGV_TEXT))
    return key + draw(st.sampled_from(["=", "=", "=", "", "==", " = "])) + value


def _image_first(image, rest) -> str:
    return ";".join(["image=" + image] + rest)


def _other_entry(other: str) -> str:
    return "other=" + other


def _entry(name, value) -> str:
    return name + "=" + value


def _torque_jobid(num, idx, server) -> str:
    return f"{num}{'' if idx is None else f'[{idx}]'}.{server}"


#: Values of ``-l other=``: well-formed pairs around hostile values, and raw hostile text.
OTHER = st.one_of(
    st.lists(_pair(), max_size=6).map(";".join),
    st.builds(_image_first,
              _VALUES["image"], st.lists(_pair(), max_size=4)),
    ARGV_TEXT,
)

#: Torque resource lists: ``name=value,...`` with an other= entry, or anything at all.
RESOURCE_LIST = st.one_of(
    st.lists(st.one_of(OTHER.map(_other_entry),
                       st.builds(_entry,
                                 st.sampled_from(["nodes", "walltime", "neednodes", "mem", "gres", "other", ""]),
                                 ARGV_TEXT)),
             max_size=5).map(",".join),
    ARGV_TEXT,
)

# ---------------------------------------------------------------- job ids, users
#: Job ids as Torque makes them: NUM.server and array jobs NUM[IDX].server.
TORQUE_JOBIDS = st.builds(
    _torque_jobid,
    st.integers(0, 10 ** 9), st.none() | st.integers(0, 99999),
    st.sampled_from(["srv", "head.cluster", "pbs-server.example.org", "S"]),
)
#: Any text as a job id, NUL included, but no undecodable bytes: $1 is the server's ASCII
#: NUM[IDX].server; job_tag fails on surrogates (test_hardening_job_tag_with_undecodable_bytes).
JOBIDS = st.one_of(TORQUE_JOBIDS, ANY_TEXT.map(strip_surrogates))
#: User names useradd accepts (shadow's NAME_REGEX): what the node's passwd normally holds.
POSIX_USERS = st.from_regex(r"[a-z_][a-z0-9_-]{0,30}\$?", fullmatch=True)

# ---------------------------------------------------------------- budgets
#: test name -> max_examples, filled by budget(); the report sums it.
BUDGETS: dict = {}


def budget(n: int, name: str = ""):
    """Hypothesis settings for one property test: n examples, no deadline, no database."""
    def apply(test):
        BUDGETS[name or test.__name__] = n
        return settings(max_examples=n, deadline=None, database=None, print_blob=True,
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                               HealthCheck.filter_too_much])(test)
    return apply

"""Which jobs pbs_mom holds on this node, read from its job files.

The sweep must never remove a job pbs_mom still holds, and the file names do not say
which job a file belongs to. pbs_mom names a job's files after the job's FILE PREFIX,
which the server chose, not after its id (Torque 6.1 source):

- a job's prefix is its id cut to 61 characters (PBS_JOBBASE, src/include/server_limits.h),
  changed by the server when a file of that name already exists: it bumps the last
  printable character (src/server/req_quejob.c determine_job_file_name);
- an array subjob ``52[1].vm`` gets ``52-1.vm`` (src/server/job_func.c job_clone);
- pbs_mom gets the prefix from the server (the ``hashname`` attribute,
  src/resmom/mom_req_quejob.c, mom_comm.c) and, started in multi-mom mode (``-m``),
  appends its port: ``52-1.vm15003.JB`` (src/server/job_recov.c job_save, which pbs_mom
  is built with).

So the job id is read from inside the ``.JB``: Torque 6 writes it as XML whose root
``<job>`` holds ``<jobid>`` and ``<fileprefix>`` (job_recov.c saveJobToXML,
add_fix_fields; tag names in src/include/job_recovery.h).

pbs_mom rewrites the file whenever the job changes (src/resmom/mom_comm.c, requests.c,
start_exec.c call job_save): it writes the new XML to ``<prefix>.JC``, unlinks the
``.JB``, links the ``.JC`` to the ``.JB`` and unlinks the ``.JC``. A reader can therefore
see a half-written ``.JC``, a moment with no ``.JB`` but a complete ``.JC``, and files
vanishing between listing and opening. Anything this module cannot read completely is
"cannot read", never "the job is unknown": the caller keeps everything then.
"""
from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, NamedTuple, Optional, Tuple

from .errors import NodeFault

JOB_FILE = ".JB"          # src/include/pbs_job.h JOB_FILE_SUFFIX
JOB_FILE_COPY = ".JC"     # JOB_FILE_COPY: the new version while job_save writes it
MAX_BYTES = 64 << 20      # a .JB holds the job's environment; far larger is not a job file
SCAN_TRIES = 6            # scans of the directory before a changing file counts as unreadable
SCAN_PAUSE = 0.05         # seconds between them (job_save takes microseconds)


class JobFilesUnreadable(NodeFault):
    """pbs_mom's job directory or a job file in it cannot be read completely."""


class BadJobFile(ValueError):
    """One file is not a complete Torque 6 XML job file (half-written, garbage, binary)."""


@dataclass(frozen=True)
class JobFile:
    jobid: str
    fileprefix: str


def jobs_dir(pbs_home: "str | Path") -> Path:
    return Path(pbs_home) / "mom_priv" / "jobs"


# ------------------------------------------------------------------------- one file
_NAME = rb"[A-Za-z_][A-Za-z0-9_.:-]*"
_TAG = re.compile(rb"<(/?)(" + _NAME + rb")((?:\s+" + _NAME + rb"\s*=\s*(?:\"[^\"<]*\"|'[^'<]*'))*)\s*(/?)>")
_DECLARATION = re.compile(rb"\s*<\?xml\s[^<>]*\?>")
_ENTITY = re.compile(r"&(?:(amp|lt|gt|quot|apos)|#([0-9]{1,7})|#x([0-9a-fA-F]{1,6}));")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
_USER_PART = b"attributes"     # ATTRIB_TAG: saveJobToXML writes the fixed fields before it


def _unescape(text: str) -> str:
    def one(match: "re.Match[str]") -> str:
        if match.group(1):
            return _NAMED[match.group(1)]
        return chr(int(match.group(2)) if match.group(2) else int(match.group(3), 16))

    out = _ENTITY.sub(one, text)
    if "&" in _ENTITY.sub("", text):
        raise BadJobFile("a bare '&' in a job id")
    return out


class _Tag(NamedTuple):
    closing: bool          # </name>
    name: bytes
    empty: bool            # <name/>
    end: int               # the offset after it


def _markup(data: bytes) -> Iterator[Tuple[bytes, Optional[_Tag], List[bytes]]]:
    """The file as (text before a tag, the tag, the open elements around it), after the XML
    declaration; the last tag is None (the text after the last tag). An end tag must close
    the innermost open element, and has closed it when seen; a start tag is open from the
    next step on. BadJobFile at anything not a well-formed tag or a misplaced end tag."""
    declaration = _DECLARATION.match(data)
    pos = declaration.end() if declaration else 0
    stack: List[bytes] = []
    while True:
        lt = data.find(b"<", pos)
        if lt < 0:
            yield data[pos:], None, stack
            return
        match = _TAG.match(data, lt)
        if not match:
            raise BadJobFile(f"no well-formed tag at byte {lt}")
        between, pos = data[pos:lt], match.end()
        tag = _Tag(match.group(1) == b"/", match.group(2), match.group(4) == b"/", pos)
        if tag.closing:
            if not stack or stack[-1] != tag.name:
                raise BadJobFile(f"</{tag.name.decode()}> does not close the open element")
            stack.pop()
        yield between, tag, stack
        if not tag.closing and not tag.empty:
            stack.append(tag.name)


def parse_job_file(data: bytes) -> JobFile:
    """The job id and file prefix of one ``.JB`` (or ``.JC``) image; BadJobFile unless complete.

    The job's own fields, which saveJobToXML writes before ``<attributes>`` (numbers, the
    id, the prefix, the queue: nothing a user writes), are read strictly: every tag is
    matched against its end tag. ``<attributes>`` and what follows are only required to end
    with the closing ``</job>``, so a file cut anywhere is still refused. The attributes
    hold the user's own text (the environment in ``Variable_List``), and libxml2 does not
    always escape it: saveJobToXML passes values to xmlNewChild, which reads ``&`` up to
    the next ``;`` as an entity reference and writes it back verbatim, markup included
    (measured with libxml2 2.9). One user's environment must not make the file unreadable,
    which would blind the sweep on a whole node, nor add a job id to it.
    """
    if len(data) > MAX_BYTES:
        raise BadJobFile(f"larger than {MAX_BYTES} bytes")
    stack: List[bytes] = []        # the open elements (_markup's)
    root_seen = False
    values: Dict[bytes, List[str]] = {b"jobid": [], b"fileprefix": []}
    text_of: Optional[bytes] = None       # the depth-1 element whose text we collect
    text: List[bytes] = []
    for between, tag, stack in _markup(data):
        if not stack and between.strip():
            raise BadJobFile("text outside the <job> element")
        if text_of is not None:
            text.append(between)
        if tag is None:
            break
        name, empty = tag.name, tag.empty
        if tag.closing:
            if text_of is not None and len(stack) == 1:
                values[text_of].append(b"".join(text).decode("utf-8", "surrogateescape"))
                text_of, text = None, []
            continue
        if not stack:
            if root_seen or name != b"job":
                raise BadJobFile("the root element is not one <job>")
            root_seen = True
        elif text_of is not None:
            raise BadJobFile(f"<{text_of.decode()}> holds elements")
        elif len(stack) == 1 and name in values:
            if empty:
                values[name].append("")
                continue
            text_of, text = name, []
        elif len(stack) == 1 and name == _USER_PART and not empty:
            if not data[tag.end:].rstrip().endswith(b"</job>"):
                raise BadJobFile("incomplete: no closing </job> (a file being written?)")
            stack.clear()         # the rest is the job's attributes: user text, not read
            break
    if not root_seen or stack:
        raise BadJobFile("incomplete: the <job> element is not closed (a file being written?)")
    jobids, prefixes = values[b"jobid"], values[b"fileprefix"]
    if len(jobids) != 1 or len(prefixes) > 1:
        raise BadJobFile(f"{len(jobids)} <jobid> and {len(prefixes)} <fileprefix> elements")
    jobid = _unescape(jobids[0]).strip()
    if not jobid or any(ch.isspace() or ord(ch) < 32 for ch in jobid):
        raise BadJobFile(f"job id {jobid!r} is not a job id")
    return JobFile(jobid, _unescape(prefixes[0]).strip() if prefixes else "")


class UserMarkup(BadJobFile):
    """The job's attributes hold an entity reference libxml2 wrote back verbatim: markup a
    user may have written, so nothing in them can be believed (see exec_host_of)."""


_FOREIGN_ENTITY = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});)")


def exec_host_of(data: bytes) -> str:
    """The job's ``exec_host`` (``<attributes><exec_host>``): the slots the server assigned.

    The attributes hold text users write (the environment, paths, name, account), and an
    entity reference in it is written back verbatim, markup included (parse_job_file): a
    user could add an ``<exec_host>`` or wrap the real one in an element of their own.
    libxml2 escapes all other text, so every ``&`` it writes begins a predefined or numeric
    reference; attributes holding any other ``&`` are refused (UserMarkup). Then every tag
    in the file is libxml2's and the file is read strictly: balanced, and exactly one
    ``<exec_host>`` directly in ``<attributes>``. BadJobFile otherwise.
    """
    parse_job_file(data)                      # complete, one job id
    stack: List[bytes] = []        # the open elements (_markup's)
    found: List[str] = []
    text: Optional[List[bytes]] = None
    for between, tag, stack in _markup(data):
        if text is not None:
            if tag is not None and not tag.closing:
                raise BadJobFile("<exec_host> holds elements")
            text.append(between)
        if tag is None:
            break
        if tag.closing:
            if text is not None and stack == [b"job", _USER_PART]:
                found.append(_unescape(b"".join(text).decode("utf-8", "surrogateescape")).strip())
                text = None
        elif stack == [b"job"] and tag.name == _USER_PART and _FOREIGN_ENTITY.search(data, tag.end):
            raise UserMarkup("the job's own text holds an '&NAME;' that pbs_mom wrote into its job file "
                             "as markup")
        elif stack == [b"job", _USER_PART] and tag.name == b"exec_host":
            if tag.empty:
                found.append("")
            else:
                text = []
    if stack:
        raise BadJobFile("incomplete: the <job> element is not closed")
    if len(found) != 1:
        raise BadJobFile(f"{len(found)} <exec_host> elements in <attributes>")
    return found[0]


def read_job_bytes(path: Path) -> bytes:
    """A job file's bytes: opened without following links or blocking (a FIFO), regular
    files only, at most MAX_BYTES (and one more chunk, so that parsing refuses a larger one)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadJobFile("not a regular file")
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_job_file(path: Path) -> JobFile:
    """Open without following links or blocking (a FIFO), read at most MAX_BYTES, parse."""
    return parse_job_file(read_job_bytes(path))


# ------------------------------------------------------------------------- the directory
def scan_once(directory: Path) -> Tuple[Dict[str, str], List[str], bool]:
    """One pass over the directory: ({file name: job id}, problems, something changed under us)."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise JobFilesUnreadable(f"cannot list pbs_mom's job directory {directory}: {exc.strerror or exc}",
                                 "check --pbs-home / $PBS_HOME: it must be pbs_mom's, with mom_priv/jobs in it"
                                 ) from None
    found: Dict[str, str] = {}
    problems: List[str] = []
    changed = False
    copies: List[str] = []
    for name in sorted(names):
        if name.endswith(JOB_FILE_COPY) and len(name) > len(JOB_FILE_COPY):
            copies.append(name)
        if not name.endswith(JOB_FILE) or len(name) <= len(JOB_FILE):
            continue
        try:
            found[name] = read_job_file(directory / name).jobid
        except FileNotFoundError:
            changed = True                    # unlinked by job_save (or a purge) since the listing
        except (OSError, BadJobFile) as exc:
            problems.append(f"{name}: {getattr(exc, 'strerror', None) or exc}")
    for name in copies:
        try:
            found[name] = read_job_file(directory / name).jobid
        except FileNotFoundError:
            changed = True                    # linked to its .JB (maybe after our listing) and removed
        except (OSError, BadJobFile) as exc:
            if name[:-len(JOB_FILE_COPY)] + JOB_FILE in found:
                continue                      # being written; the .JB beside it names the job
            problems.append(f"{name}: {getattr(exc, 'strerror', None) or exc}")
    return found, problems, changed


def held_jobs(pbs_home: "str | Path", *, tries: int = SCAN_TRIES, pause: float = SCAN_PAUSE) -> FrozenSet[str]:
    """Every job id pbs_mom holds a job file for, read exactly; JobFilesUnreadable when unsure.

    A scan that met a file being written or vanishing is repeated (job_save is done in
    microseconds); when every one of ``tries`` scans met trouble, the answer is "cannot
    read", naming the files, never a set that might lack a job.
    """
    directory = jobs_dir(pbs_home)
    problems: List[str] = []
    for attempt in range(max(1, tries)):
        if attempt:
            time.sleep(pause)
        found, problems, changed = scan_once(directory)
        if not problems and not changed:
            return frozenset(found.values())
    raise JobFilesUnreadable(
        f"cannot read pbs_mom's job files in {directory}: "
        + ("; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
           if problems else "they kept changing while read"),
        "the sweep keeps every job until they can be read; a file pbs_mom no longer uses "
        "(momctl -d3 lists its jobs) can be moved out of mom_priv/jobs")

"""Target variables kept on the laptop unless the user names them: they would let the target run code here.

The app runs on the laptop, and so do the programs it starts (``git``, ``bash``, ``perl``, a pager). Many
variables change how such a program loads code, finds credentials or writes files: ``BASH_ENV`` makes every
non-interactive bash source a file, ``GIT_CONFIG_*`` can set ``core.fsmonitor`` to any command, ``PERL5OPT``
loads modules, ``KUBECONFIG`` picks the laptop's cluster credentials. Taken from a pod, they hand the pod's
image author (or whoever compromised the pod) a way to run commands as the developer. So these families stay
local by default; ``env.include`` naming one (exactly, or with a pattern that is more than wildcards, like
``GIT_*``) takes it anyway, because then the user has asked for it.

The families are data, so docs/configuration.md's table and the tests read the same list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    why: str
    names: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()

    def matches(self, variable: str) -> bool:
        return variable in self.names or variable.startswith(self.prefixes)


FAMILIES: tuple[Family, ...] = (
    Family(
        "shell start-up",
        "a shell the app starts sources or runs them",
        names=("BASH_ENV", "ENV", "PROMPT_COMMAND", "PS0", "PS1", "PS2", "PS3", "PS4", "CDPATH", "IFS",
               "GLOBIGNORE", "SHELLOPTS", "BASHOPTS", "ZDOTDIR", "INPUTRC", "HISTFILE"),
        prefixes=("BASH_FUNC_",),
    ),
    Family(
        "other languages' runtimes",
        "they load code into perl, ruby, node, java or lua programs",
        names=("RUBYOPT", "RUBYLIB", "GEM_HOME", "GEM_PATH", "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS",
               "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH", "LUA_INIT", "LUA_PATH", "LUA_CPATH"),
        prefixes=("PERL5", "PERL_"),
    ),
    Family(
        "C library",
        "glibc loads conversion modules, locales and tunables from them in every program",
        names=("GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "HOSTALIASES", "LOCALDOMAIN", "RES_OPTIONS",
               "MALLOC_CHECK_", "MALLOC_PERTURB_"),
        prefixes=("DYLD_",),
    ),
    Family(
        "version control and builds",
        "git runs commands they name; compilers, make and pip load code through them",
        names=("CC", "CXX", "CPP", "LD", "AR", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "MAKEFLAGS", "MFLAGS",
               "PKG_CONFIG_PATH", "CPATH", "LIBRARY_PATH", "C_INCLUDE_PATH"),
        prefixes=("GIT_", "PIP_", "UV_"),
    ),
    Family(
        "test runners",
        "they add plugins to pytest and coverage on the laptop",
        prefixes=("PYTEST_", "COVERAGE_", "COV_CORE_"),
    ),
    Family(
        "credentials",
        "the laptop's own cluster, registry, SSH, GPG and Kerberos credentials",
        names=("KUBECONFIG", "NETRC", "GNUPGHOME", "KRB5CCNAME", "KRB5_CONFIG", "SUDO_ASKPASS"),
        prefixes=("SSH_", "DOCKER_", "GPG_"),
    ),
    Family(
        "TLS",
        "where laptop programs find CAs, load engines and write session keys (the pod's paths are not here)",
        names=("SSLKEYLOGFILE", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
               "NODE_EXTRA_CA_CERTS", "OPENSSL_CONF", "OPENSSL_ENGINES", "OPENSSL_MODULES"),
    ),
    Family(
        "laptop files",
        "where laptop programs read their configuration and write their files",
        names=("TMP", "TEMP", "TEMPDIR", "IPYTHONDIR", "MPLCONFIGDIR", "CURL_HOME", "WGETRC", "LESSKEY",
               "TERMINFO", "TERMINFO_DIRS"),
        prefixes=("XDG_", "JUPYTER_"),
    ),
    Family(
        "programs the laptop opens",
        "git, less, man and webbrowser run the commands they name",
        names=("EDITOR", "VISUAL", "SUDO_EDITOR", "PAGER", "MANPAGER", "BROWSER", "LESSOPEN", "LESSCLOSE", "LESS"),
    ),
    Family(
        "desktop session",
        "they reach the laptop's display and session bus",
        names=("DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY", "DBUS_SESSION_BUS_ADDRESS"),
    ),
)

_WILDCARDS_ONLY = re.compile(r"^(?:\*|\?|\[[^\]]*\])*$")


def family_of(variable: str) -> Family | None:
    """The family that keeps ``variable`` local, if any."""
    for family in FAMILIES:
        if family.matches(variable):
            return family
    return None


def explicit(pattern: str) -> bool:
    """An ``include`` pattern names variables when it is more than wildcards: ``*`` takes what a pod usually
    sets, not the shell and credential variables the user never thought of."""
    return not _WILDCARDS_ONLY.match(pattern)


def named_by(variable: str, patterns: Iterable[str]) -> bool:
    from fnmatch import fnmatchcase

    return any(explicit(p) and fnmatchcase(variable, p) for p in patterns)


def note(kept: list[str], limit: int = 8) -> str:
    """The one line that tells the user which of the target's variables stayed on the laptop, and the way out."""
    names = [n if n.isascii() and n.replace("_", "a").isalnum() else repr(n) for n in kept[:limit]]
    shown = ", ".join(names) + (f" and {len(kept) - limit} more" if len(kept) > limit else "")
    count = "variable" if len(kept) == 1 else "variables"
    return (f"kept {len(kept)} of the target's environment {count} on this machine: {shown} (they change how "
            "programs here load code, find credentials or write files; name one in env.include to take it)")

"""The rivals of `bench/fuse.py`: rclone 1.60 and s3fs 1.90 (Debian 12's packages, the
versions the issue's targets were measured with) mounting the bench's bucket, so that every
figure of tierfs stands beside theirs measured in the same run, on the same machine state.

Each rival runs in two configurations, and the best of them counts per figure: with its disk
cache (rclone `--vfs-cache-mode full`, s3fs `use_cache`), as tierfs has tier 1, and without.
`make bench` installs both packages; a rival that is missing fails the bench, never skips.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import servers  # tests/ is on sys.path (bench/fuse.py puts it there)
from mounts import is_mounted, tail, wait_until_serving

# Both read ahead and fetch in parallel as far as their flags allow: the best they can do.
RCLONE_TUNING = ["--buffer-size", "64M", "--vfs-read-ahead", "64M", "--transfers", "16"]
S3FS_TUNING = ["parallel_count=16", "multireq_max=16", "max_stat_cache_size=100000"]  # -o
# configuration -> (program, whether it keeps a disk cache)
RIVALS: dict[str, tuple[str, bool]] = {
    "rclone cached": ("rclone", True),
    "rclone": ("rclone", False),
    "s3fs cached": ("s3fs", True),
    "s3fs": ("s3fs", False),
}


def require(programs: set[str]) -> None:
    """Exit unless every program is installed (`make bench` installs them)."""
    missing = sorted(p for p in programs if shutil.which(p) is None)
    if missing:
        raise SystemExit(
            f"bench/fuse.py: {', '.join(missing)} not installed: `make bench` installs them "
            "(scripts/install-system-packages.sh rclone s3fs), or pass --rivals none"
        )


@dataclass
class RivalMount:
    """One rival's FUSE client as a foreground process: mount point, cache dir, process and
    log; the same surface as tests/mounts.py's `Mount` for the bench."""

    configuration: str
    path: Path
    cache: Path
    flags: dict[str, str]  # the bench's tierfs flags: the bucket and endpoint are read here
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The command line and the environment that mount the bucket at `path`."""
        program, cached = RIVALS[self.configuration]
        endpoint, bucket = self.flags["s3_endpoint"], self.flags["s3_bucket"]
        key, secret = self.env["AWS_ACCESS_KEY_ID"], self.env["AWS_SECRET_ACCESS_KEY"]
        if program == "rclone":
            remote = {"TYPE": "s3", "PROVIDER": "Other", "ENDPOINT": endpoint}
            remote |= {"ACCESS_KEY_ID": key, "SECRET_ACCESS_KEY": secret}
            remote |= {"REGION": self.flags["s3_region"], "FORCE_PATH_STYLE": "true"}
            env = {f"RCLONE_CONFIG_BUCKET_{name}": value for name, value in remote.items()}
            args = ["rclone", "--config", "/dev/null", "mount", f"bucket:{bucket}", str(self.path)]
            args += ["--cache-dir", str(self.cache), *RCLONE_TUNING]
            # full: reads are kept on disk; written files upload at once after close
            args += ["--vfs-cache-mode", "full", "--vfs-write-back", "0s"] if cached else []
            return args, servers.clean_env(**env)
        passwords = self.cache.parent / "s3fs-passwords"
        passwords.write_text(f"{key}:{secret}\n")
        passwords.chmod(0o600)
        args = ["s3fs", bucket, str(self.path), "-f", "-o", f"url={endpoint}"]
        args += ["-o", "use_path_request_style", "-o", f"passwd_file={passwords}"]
        args += ["-o", f"endpoint={self.flags['s3_region']}"]
        args += [part for option in S3FS_TUNING for part in ("-o", option)]
        args += ["-o", f"use_cache={self.cache}"] if cached else []
        return args, servers.clean_env()

    def start(self) -> RivalMount:
        """Start the rival and wait until its mount answers (or fail with its log)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        args, env = self.command()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        if not wait_until_serving(self.path, self.proc):
            self.stop()
            raise SystemExit(f"{self.configuration} did not mount {self.path}:\n{self.log_tail()}")
        return self

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)

    def stop(self, timeout: float = 60.0) -> int | None:
        """Unmount (both rivals then exit) and wait; SIGKILL its group past `timeout`."""
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            return None

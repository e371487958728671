"""The verdict of ``fastsigclr data verify`` on files whose md5 is not the official one: a file
that does not load is corrupt (download again); files that load as complete batches of the right
shape are usable data with other bytes (a re-encoded or rebuilt copy), which deleting would lose."""

from __future__ import annotations

from pathlib import Path

from fastsigclr.data.cifar import load_pickle, read_batch
from fastsigclr.data.files import redownload_hint
from fastsigclr.data.info import DatasetError, DatasetInfo


class UnofficialData(DatasetError):
    """Files whose md5 is not the official one but that load as complete batches: usable data."""

    def __init__(self, message: str, sums: dict[str, str]) -> None:
        super().__init__(message)
        self.sums = sums


def check_official(info: DatasetInfo, folder: Path, sums: dict[str, str]) -> None:
    """Compare ``sums`` (name → md5 of the files in ``folder``) with ``info.file_md5``: a missing
    or unloadable file is a DatasetError that says to download again; files that only differ are
    an ``UnofficialData`` error that says to keep them."""
    differ = [(name, md5) for name, md5 in info.file_md5 if sums.get(name) != md5]
    unusable = [f"{name} is missing" for name, _ in differ if name not in sums]
    batches = (*info.train_files, *info.test_files)
    for name, _ in differ:
        if name in sums:
            try:
                read_batch(info, folder / name) if name in batches else load_pickle(folder / name)
            except DatasetError as err:
                unusable.append(f"{name} does not load ({str(err).split('; ')[0]})")
    listed = "; ".join(f"{name} has md5 {sums[name]}, expected {md5}" for name, md5 in differ if name in sums)
    if unusable:
        raise DatasetError(
            f"{folder} is not the official {info.name}: {'; '.join(unusable)}"
            f"{'; ' + listed if listed else ''}. The files are corrupt: {redownload_hint(info, folder)}"
        )
    if differ:
        raise UnofficialData(
            f"{folder} is not the official {info.name}: {listed}. Each loads as a complete batch of the "
            f"right shape: usable data (a re-encoded or rebuilt copy, or pixels changed in place), so "
            f"keep it; download again only if you need the official bytes",
            sums,
        )

"""Publishing a Code Llama family to the Hub: one repository per member, its model card, and a collection.

A family is up to nine models (7B/13B/34B x base, Python, Instruct), each a stage's output folder with its
lineage and, optionally, its evaluation results. `push_family` runs in numbered steps:

1. stage every repository in `stage_dir/<repo name>/`: the model's files (hard links, so nothing is copied),
   config.json with both rope keys, README.md written from the lineage and results (codellama_hf.publish.card),
   and the results themselves under evaluation/; each staged folder is what the repository will hold, and loads
   with plain transformers;
2. compare each staged file with the Hub's copy (sha256 for LFS files, git blob ids for the others) and write
   `stage_dir/push-plan.json`: exactly the files that will be uploaded (and deleted, with delete_stale);
3. unless dry_run: create missing repositories and commit only the changed files, then create the collection and
   add the members it lacks. A second run with nothing changed sends no write request at all.

The token comes from HF_TOKEN or the login store (`hf auth login`), through huggingface_hub; it is handed to the
client and never printed or written. Uploads go through huggingface_hub's own client (Xet storage when hf_xet is
installed, Git LFS otherwise).

    codellama-hf push --model 7b=outputs/7b/lcft --model 7b-python=outputs/7b/python --namespace me --dry-run
    codellama-hf push --config family.yaml
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from codellama_hf.family import Variant
from codellama_hf.io import write_json
from codellama_hf.publish.staging import HASH_CACHE, KEEP_REMOTE, PLAN_FILE, PushConfig, stage_repo

logger = logging.getLogger(__name__)

# 2. Comparing with the Hub


class _Hashes:
    """sha256 of staged files, cached by inode, size and mtime (a staged weight file is the trained file)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.cache = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.cache = {}

    def sha256(self, file: Path) -> str:
        st = file.stat()
        key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        if key not in self.cache:
            from tqdm.auto import tqdm

            digest = hashlib.sha256()
            with (
                open(file, "rb") as handle,
                tqdm(
                    total=st.st_size,
                    unit="B",
                    unit_scale=True,
                    leave=False,
                    desc=f"hashing {file.name}",
                    disable=st.st_size < 256 << 20,
                ) as bar,
            ):
                for block in iter(lambda: handle.read(8 << 20), b""):
                    digest.update(block)
                    bar.update(len(block))
            self.cache[key] = digest.hexdigest()
        return self.cache[key]

    def save(self) -> None:
        write_json(self.path, self.cache, indent=None)


def _git_blob_id(file: Path) -> str:
    data = file.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class RepoPlan:
    """What pushing one staged repository changes on the Hub."""

    repo_id: str
    folder: Path
    exists: bool
    upload: list[str]
    delete: list[str]
    unchanged: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.upload or self.delete)


@contextlib.contextmanager
def hub_errors(action: str, endpoint: str):
    """Turn the client's HTTP errors into one-line errors that say what to do (never echoing the token)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        hint = {
            401: "the Hub rejected the token: check HF_TOKEN or run `hf auth login`",
            403: "the token may not write there: use a write token for that namespace",
        }.get(status)
        first_line = str(err).splitlines()[0]
        raise RuntimeError(
            f"{action} failed on {endpoint} (HTTP {status}): {first_line}" + (f"; {hint}" if hint else "")
        ) from None
    except OfflineModeIsEnabled:
        raise RuntimeError(
            f"{action}: HF_HUB_OFFLINE is set, and pushing (or comparing with --dry-run) needs the "
            "Hub; unset HF_HUB_OFFLINE"
        ) from None
    except httpx2.TransportError as err:
        raise RuntimeError(f"{action}: cannot reach {endpoint} ({type(err).__name__}: {err})") from None


def plan_repo(api, repo_id: str, folder: Path, revision: str, hashes: _Hashes, *, delete_stale: bool) -> RepoPlan:
    """Compare a staged folder with the repository at `revision` (a missing repo or branch: everything is new)."""
    from huggingface_hub import RepoFile
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    local = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    exists, remote = True, {}
    with hub_errors(f"listing {repo_id}", api.endpoint):
        try:
            remote = {
                f.path: f
                for f in api.list_repo_tree(repo_id, recursive=True, revision=revision)
                if isinstance(f, RepoFile)
            }
        except (RepositoryNotFoundError, RevisionNotFoundError) as err:
            exists = isinstance(err, RevisionNotFoundError)  # a missing branch of an existing repo
    upload, unchanged = [], []
    for path, file in local.items():
        theirs = remote.get(path)
        if theirs is None or theirs.size != file.stat().st_size:
            same = False
        elif theirs.lfs is not None:
            same = theirs.lfs.sha256 == hashes.sha256(file)
        else:
            same = theirs.blob_id == _git_blob_id(file)
        (unchanged if same else upload).append(path)
    stale = sorted(set(remote) - set(local) - set(KEEP_REMOTE)) if delete_stale else []
    return RepoPlan(repo_id, folder, exists, upload, stale, unchanged)


# 3. Uploading


def push_repo(api, plan: RepoPlan, config: PushConfig, name: str) -> str | None:
    """Create the repository if needed and commit the planned files; the commit id (None: nothing to do)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    if not plan.changed:
        return None
    with hub_errors(f"pushing {plan.repo_id}", api.endpoint):
        if not plan.exists:
            api.create_repo(plan.repo_id, private=config.private, exist_ok=True)
        if config.revision != "main":
            api.create_branch(plan.repo_id, branch=config.revision, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(plan.folder / p)) for p in plan.upload]
        operations += [CommitOperationDelete(path_in_repo=p) for p in plan.delete]
        info = api.create_commit(
            plan.repo_id,
            operations=operations,
            revision=config.revision,
            commit_message=config.commit_message.format(name=name),
        )
    return info.oid


def update_collection(api, config: PushConfig, namespace: str, repos: dict[str, Variant]) -> dict:
    """Find (or create) the collection by title and add the repositories it lacks; what was (or would be) done."""
    with hub_errors(f"reading the collections of {namespace}", api.endpoint):
        found = next(
            (c for c in api.list_collections(owner=namespace, limit=1000) if c.title == config.collection), None
        )
        present = {item.item_id for item in api.get_collection(found.slug).items} if found else set()
    missing = [repo for repo in repos if repo not in present]
    report = {
        "title": config.collection,
        "slug": found.slug if found else None,
        "create": found is None,
        "add": missing,
    }
    if config.dry_run or not (missing or found is None):
        return report
    with hub_errors(f"updating collection {config.collection!r}", api.endpoint):
        if found is None:
            found = api.create_collection(
                config.collection,
                namespace=namespace,
                private=config.private,
                description=config.collection_description,
            )
            report["slug"] = found.slug
        for repo in missing:
            api.add_collection_item(
                found.slug, item_id=repo, item_type="model", note=repos[repo].title, exists_ok=True
            )
    return report


# The whole push


def resolve_token(required: bool) -> str | None:
    """The token from HF_TOKEN or the login store; a clear error when a push needs one and there is none."""
    from huggingface_hub import get_token

    token = get_token()
    if token is None and required:
        raise ValueError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access "
            "to the namespace); --dry-run needs none for public repositories"
        )
    return token


def stage_family(config: PushConfig, namespace: str) -> dict[str, Path]:
    """Stage every member's repository under config.stage_dir (no network): {repo id: staged folder}."""
    from codellama_hf.publish.card import CardOptions

    repos = {f"{namespace}/{config.repo_name(m.variant)}": m for m in config.models}
    family = {m.variant: repo for repo, m in repos.items()}
    published = {str(m.path.resolve()): repo for repo, m in repos.items()}
    staged = {}
    for repo_id, member in repos.items():
        options = CardOptions(
            repo_id=repo_id,
            variant=member.variant,
            base_model=member.base_model,
            license=config.license,
            developer=namespace,
            family=family,
            published=published,
        )
        staged[repo_id] = stage_repo(member, config.stage_dir / repo_id.split("/", 1)[1], options)
    return staged


def push_family(config: PushConfig, *, token: str | None = None) -> dict:
    """Stage, compare and (unless dry_run) publish the family; returns the plan/result written to push-plan.json."""
    from huggingface_hub import HfApi

    # 1. Token (environment or login store) and namespace
    token = token or resolve_token(required=not config.dry_run)
    api = HfApi(endpoint=config.endpoint, token=token)
    namespace = config.namespace
    if namespace is None:
        if token is None:
            raise ValueError("no namespace: pass --namespace (or log in so the token's user is used)")
        with hub_errors("asking the Hub who the token belongs to", api.endpoint):
            namespace = api.whoami()["name"]
    repos = {f"{namespace}/{config.repo_name(m.variant)}": m for m in config.models}
    # 2. Stage every repository (model files, config with both rope keys, card, results)
    staged = stage_family(config, namespace)
    # 3. Compare with the Hub: the files that would be uploaded
    hashes = _Hashes(config.stage_dir / HASH_CACHE)
    plans = {
        repo_id: plan_repo(api, repo_id, folder, config.revision, hashes, delete_stale=config.delete_stale)
        for repo_id, folder in staged.items()
    }
    hashes.save()
    report = {
        "endpoint": api.endpoint,
        "namespace": namespace,
        "revision": config.revision,
        "dry_run": config.dry_run,
        "repos": {},
    }
    # 4. Upload what changed (nothing with --dry-run), then the collection
    for repo_id, plan in plans.items():
        commit = None if config.dry_run else push_repo(api, plan, config, repo_id.split("/", 1)[1])
        report["repos"][repo_id] = {
            "slot": repos[repo_id].slot,
            "folder": str(plan.folder),
            "exists": plan.exists,
            "upload": plan.upload,
            "delete": plan.delete,
            "unchanged": plan.unchanged,
            "commit": commit,
        }
    if config.collection:
        report["collection"] = update_collection(api, config, namespace, {r: m.variant for r, m in repos.items()})
    write_json(config.stage_dir / PLAN_FILE, report)
    return report


def print_report(report: dict, stage_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    verb = "would upload" if report["dry_run"] else "uploaded"
    table = Table(title=f"{'dry run: ' if report['dry_run'] else ''}{report['endpoint']} ({report['revision']})")
    for column in ("repository", "slot", "state", verb, "unchanged", "deleted"):
        table.add_column(column)
    for repo_id, r in report["repos"].items():
        state = "new" if not r["exists"] else "changed" if r["upload"] or r["delete"] else "up to date"
        table.add_row(
            repo_id,
            r["slot"],
            state,
            ", ".join(r["upload"]) or "-",
            str(len(r["unchanged"])),
            ", ".join(r["delete"]) or "-",
        )
    console = Console(highlight=False)
    console.print(table)
    collection = report.get("collection")
    if collection:
        dry = report["dry_run"]
        if collection["create"]:
            action = "would be created" if dry else f"created as {collection['slug']}"
        elif collection["add"]:
            action = f"{collection['slug']}: {'would add' if dry else 'added'}"
        else:
            action = f"{collection['slug']} is up to date"
        added = f" ({', '.join(collection['add'])})" if collection["add"] else ""
        console.print(f"collection {collection['title']!r} {action}{added}")
    console.print(f"staged repositories and {PLAN_FILE} in {stage_dir}")

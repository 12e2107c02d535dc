"""Publishing a Code Llama family to the Hub: one repository per member, its model card, and a collection.

A family is up to nine models (7B/13B/34B x base, Python, Instruct), each a stage's output folder with its
lineage and, optionally, its evaluation results. `push_family` runs in numbered steps:

1. stage every repository in `stage_dir/<repo name>/`: the model's files (hard links, so nothing is copied),
   config.json with both rope keys, README.md written from the lineage and results (codellama_hf.cards),
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

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

from codellama_hf.io import atomic_dir, read_yaml_mapping, write_json
from codellama_hf.load import Variant, parse_slot

logger = logging.getLogger(__name__)

PLAN_FILE = "push-plan.json"
HASH_CACHE = ".hashes.json"
# What a published model folder holds (everything else in a stage's output, like checkpoints, stays home).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "lineage.json",
    "training_curves.png",
)
RESULT_FILES = ("*.json", "report.md", "*.png")
KEEP_REMOTE = (".gitattributes",)


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Member:
    """One model of the family: its slot (7b, 7b-python, ...), folder, results and Hub parent."""

    slot: str
    path: Path
    results: list[Path] = field(default_factory=list)
    base_model: str | None = None

    def __post_init__(self):
        self.variant: Variant = parse_slot(self.slot)
        self.path = Path(self.path).expanduser()
        self.results = [Path(p).expanduser() for p in self.results]


@dataclass
class PushConfig:
    """A family push. In YAML, `models` maps slots to a folder or to {path, results, base_model}."""

    models: list[Member] = field(default_factory=list)
    namespace: str | None = None  # user or organisation; default: the token's user
    repo_template: str = "{name}-hf"  # {name} = CodeLlama-7b-Python; also {size} and {kind}
    collection: str | None = "Code Llama (codellama_hf)"  # title; None: no collection
    collection_description: str | None = "Code Llama models reproduced with codellama_hf"
    private: bool = False
    license: str = "llama2"
    revision: str = "main"
    stage_dir: Path = Path("push_staging")
    delete_stale: bool = False  # also delete remote files the staged repo does not have
    dry_run: bool = False
    endpoint: str | None = None  # default: HF_ENDPOINT or https://huggingface.co
    commit_message: str = "Upload {name} with codellama_hf"

    def __post_init__(self):
        self.stage_dir = Path(self.stage_dir).expanduser()
        slots = [m.variant for m in self.models]
        duplicates = sorted({v.slot for v in slots if slots.count(v) > 1})
        if duplicates:
            raise ValueError(f"family slot(s) {duplicates} given twice; each member is one repository")
        for member in self.models:
            if not member.path.is_dir():
                raise FileNotFoundError(f"model {member.slot}: {member.path} is not a folder")
            for folder in member.results:
                if not folder.is_dir():
                    raise FileNotFoundError(f"model {member.slot}: results folder {folder} not found")

    def repo_name(self, variant: Variant) -> str:
        return self.repo_template.format(name=variant.name, size=variant.size, kind=variant.kind)


def _members(spec, where: str) -> list[Member]:
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: 'models' must map family slots (7b, 7b-python, ...) to model folders")
    members = []
    for slot, value in spec.items():
        if isinstance(value, (str, os.PathLike)):
            value = {"path": value}
        if not isinstance(value, dict) or "path" not in value:
            raise ValueError(f"{where}: models.{slot} must be a folder or a mapping with 'path'")
        unknown = set(value) - {"path", "results", "base_model"}
        if unknown:
            raise ValueError(
                f"{where}: models.{slot} has unknown key(s) {sorted(unknown)}; known: path, results, base_model"
            )
        results = value.get("results") or []
        members.append(
            Member(
                str(slot), value["path"], [results] if isinstance(results, str) else results, value.get("base_model")
            )
        )
    return members


def read_push_config(
    path: str | os.PathLike | None, *, models=(), results=None, base_models=None, **overrides
) -> PushConfig:
    """PushConfig from a YAML file (optional) and command-line values, which win; unknown keys are errors.

    models: Members added to (or replacing) the file's; results / base_models: {slot: value} for any member.
    """
    where = str(path) if path else "push options"
    data = read_yaml_mapping(path, "push config") if path is not None else {}
    known = {f.name for f in fields(PushConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    by_variant = {m.variant: m for m in [*_members(data.pop("models", None) or {}, where), *models]}
    for flag, values in (("--results", results or {}), ("--base-model", base_models or {})):
        for slot, value in values.items():
            member = by_variant.get(parse_slot(slot))
            if member is None:
                raise ValueError(f"{flag} {slot}={value}: {slot} is not one of the models to push")
            if flag == "--results":
                member.results.append(Path(value).expanduser())
            else:
                member.base_model = value
    data.update({k: v for k, v in overrides.items() if v is not None})
    if not by_variant:
        raise ValueError(f"{where}: no models to push; give `models:` in the config or --model SLOT=FOLDER")
    return PushConfig(models=list(by_variant.values()), **data)


# ---------------------------------------------------------------------------------------------------------------
# 1. Staging
# ---------------------------------------------------------------------------------------------------------------


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def _matching(folder: Path, patterns) -> list[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})


def stage_repo(member: Member, repo_dir: Path, card_options) -> Path:
    """Build `repo_dir`: the model's files, config with both rope keys, README.md and evaluation/ (atomically)."""
    from codellama_hf.cards import read_facts, read_results, render_card
    from codellama_hf.models import write_config_with_both_rope_keys

    facts = read_facts(member.path)  # checks config, weights, tokenizer and lineage before anything is written
    if card_options.variant.vocab_size and facts.config.get("vocab_size") != card_options.variant.vocab_size:
        logger.warning(
            "%s: %s has vocabulary %s, but Meta's %s has %s",
            member.slot,
            member.path,
            facts.config.get("vocab_size"),
            card_options.variant.name,
            card_options.variant.vocab_size,
        )
    if card_options.variant.infilling != facts.infilling:
        logger.warning(
            "%s: %s %s infill, unlike Meta's %s",
            member.slot,
            member.path,
            "can" if facts.infilling else "cannot",
            card_options.variant.name,
        )
    results = read_results(member.results)
    with atomic_dir(repo_dir, overwrite=True) as tmp:  # staging is rebuilt on every run
        for source in _matching(member.path, MODEL_FILES):
            if source.name == "config.json":
                shutil.copyfile(source, tmp / source.name)  # rewritten below: never touch the original
            else:
                _link_or_copy(source, tmp / source.name)
        write_config_with_both_rope_keys(tmp)
        for folder in member.results:
            for source in _matching(folder, RESULT_FILES):
                _link_or_copy(source, tmp / "evaluation" / source.name)
        (tmp / "README.md").write_text(str(render_card(facts, results, card_options)))
    return repo_dir


# ---------------------------------------------------------------------------------------------------------------
# 2. Comparing with the Hub
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# 3. Uploading
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# The whole push
# ---------------------------------------------------------------------------------------------------------------


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


def push_family(config: PushConfig, *, token: str | None = None) -> dict:
    """Stage, compare and (unless dry_run) publish the family; returns the plan/result written to push-plan.json."""
    from huggingface_hub import HfApi

    from codellama_hf.cards import CardOptions

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
    family = {m.variant: repo for repo, m in repos.items()}
    published = {str(m.path.resolve()): repo for repo, m in repos.items()}
    # 2. Stage every repository (model files, config with both rope keys, card, results)
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


# ---------------------------------------------------------------------------------------------------------------
# CLI (recipes/push.py runs the same command)
# ---------------------------------------------------------------------------------------------------------------


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values or []:
        slot, sep, rest = value.partition("=")
        if not sep or not rest:
            raise ValueError(f"{flag} {value!r}: expected SLOT=VALUE, e.g. 7b-python=outputs/7b/python")
        out[slot] = rest
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML push config (models, namespace, collection, ...)")
    parser.add_argument(
        "--model",
        action="append",
        metavar="SLOT=FOLDER",
        help="a family member: 7b, 7b-python, 13b-instruct, ... and its model folder (repeatable)",
    )
    parser.add_argument(
        "--results", action="append", metavar="SLOT=FOLDER", help="evaluation results folder of a member (repeatable)"
    )
    parser.add_argument(
        "--base-model",
        action="append",
        metavar="SLOT=HUB_ID",
        help="Hub id a member was trained from, for its card's base_model (repeatable)",
    )
    parser.add_argument("--namespace", help="user or organisation (default: the token's user)")
    parser.add_argument("--collection", help="collection title")
    parser.add_argument("--no-collection", action="store_true", help="do not create or update a collection")
    parser.add_argument("--private", action="store_true", default=None, help="create private repositories")
    parser.add_argument("--license", help="Hub license id of the cards (default llama2)")
    parser.add_argument("--revision", help="branch to push to (default main)")
    parser.add_argument("--stage-dir", type=Path, help="where repositories are staged (default push_staging)")
    parser.add_argument(
        "--delete-stale",
        action="store_true",
        default=None,
        help="delete remote files the staged repository does not have",
    )
    parser.add_argument(
        "--dry-run", action="store_true", default=None, help="stage and compare only: write the plan, upload nothing"
    )


def config_from_args(args: argparse.Namespace) -> PushConfig:
    members = [Member(slot, path) for slot, path in _pairs(args.model, "--model").items()]
    config = read_push_config(
        args.config,
        models=members,
        results=_pairs(args.results, "--results"),
        base_models=_pairs(args.base_model, "--base-model"),
        namespace=args.namespace,
        private=args.private,
        license=args.license,
        revision=args.revision,
        stage_dir=args.stage_dir,
        delete_stale=args.delete_stale,
        dry_run=args.dry_run,
        collection=args.collection,
    )
    if args.no_collection:
        config.collection = None
    return config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="publish a Code Llama family (repos, cards, collection) to the Hub",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    report = push_family(config)
    print_report(report, config.stage_dir)
    return 0

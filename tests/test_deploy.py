"""The deployment files (deploy/): they parse, the replicas share the PostgreSQL store, and no
password or token is written in them. (docker compose and a Kubernetes API server are not
needed: the files are read as YAML.)"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .conftest import REPO

DEPLOY = REPO / "deploy"

_URL_PASSWORD = re.compile(r"postgres(?:ql)?://[^:/@\s]+:(\$\{[^}]*\}|[^@\s]*)@")


def _documents(path: str) -> list[Any]:
    return [d for d in yaml.safe_load_all((DEPLOY / path).read_text()) if d is not None]


def test_compose_runs_the_replicas_on_a_postgres_service() -> None:
    (compose,) = _documents("compose.yaml")
    services = compose["services"]
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in postgres["healthcheck"]["test"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in postgres["volumes"]}
    assert mounted == {"postgres-data": "/var/lib/postgresql/data"}
    assert set(compose["volumes"]) == {"postgres-data"}  # no shared SQLite volume any more
    # The password: a compose secret, from the environment or deploy/.env, never inline.
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    assert "POSTGRES_PASSWORD" not in postgres["environment"]
    assert postgres["secrets"] == ["postgres-password"]
    assert compose["secrets"]["postgres-password"] == {"environment": "POSTGRES_PASSWORD"}
    replicas = [s for name, s in services.items() if name.startswith("voicebot")]
    assert len(replicas) == 2
    for replica in replicas:
        url = replica["environment"]["VOICEBOT_STORE_URL"]
        assert url.startswith("postgresql://voicebot:") and "@postgres:5432/voicebot" in url
        password = _URL_PASSWORD.match(url)
        assert password is not None and password.group(1).startswith("${POSTGRES_PASSWORD")
        assert replica["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert "volumes" not in replica


def test_no_deploy_file_holds_a_database_password() -> None:
    for path in [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.example")]:
        text = path.read_text()
        for password in _URL_PASSWORD.findall(text):
            assert password in ("", "PASSWORD", "$PASSWORD") or password.startswith("${"), path
        assert not re.search(r"^[ \t]*POSTGRES_PASSWORD[ \t]*[:=][ \t]*\S", text, re.M), path
        assert "stringData" not in text, path  # Secrets are made with kubectl, not applied


def test_kubernetes_reads_the_store_url_from_a_secret_and_has_a_postgres() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in _documents("kubernetes/voicebot.yaml")}
    assert ("Secret", "voicebot") not in kinds  # made once with kubectl create secret
    deployment = kinds[("Deployment", "voicebot")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["VOICEBOT_STORE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "voicebot",
        "key": "store-url",
    }
    postgres = {
        (d["kind"], d["metadata"]["name"]): d for d in _documents("kubernetes/postgres.yaml")
    }
    service = postgres[("Service", "postgres")]
    assert service["spec"]["ports"][0]["port"] == 5432
    stateful = postgres[("StatefulSet", "postgres")]
    (db,) = stateful["spec"]["template"]["spec"]["containers"]
    db_env = {e["name"]: e for e in db["env"]}
    assert db_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "voicebot-postgres"
    assert "pg_isready" in db["readinessProbe"]["exec"]["command"]
    assert stateful["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"

"""The provider as Airflow sees it: entry point, provider-info schema, hooks, and the connection forms."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import airflow
import jsonschema
import pytest

from airflow_provider_readreceipts.get_provider_info import get_provider_info

CONN_TYPES = ("sendblue", "chert", "ryze", "direct7")
SECRET_EXTRAS = {
    "sendblue": {"webhook_secret"},
    "chert": {"webhook_secret"},
    "ryze": {"webhook_authorization"},
    "direct7": {"webhook_token"},
}


@pytest.fixture(scope="module")
def form_by_type():
    # What the 3.3 UI's Add Connection form is built from (GET /ui/connections/hook_meta).
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    return {meta.connection_type: meta for meta in HookMetaService.hook_meta_data()}


def test_registered_through_the_provider_entry_point():
    (entry,) = [
        e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_provider")
    ]
    assert entry.load() is get_provider_info


def test_provider_info_matches_airflows_schema():
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_providers_manager_imports_every_hook():
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hooks = ProvidersManagerTaskRuntime().hooks
    for conn_type in CONN_TYPES:
        hook = hooks[conn_type]
        assert hook is not None, f"{conn_type}: hook failed to import"
        assert hook.package_name == "airflow-provider-readreceipts"
        assert hook.connection_id_attribute_name == f"{conn_type}_conn_id"


@pytest.mark.parametrize("conn_type", CONN_TYPES)
def test_connection_form(form_by_type, conn_type):
    form = form_by_type[conn_type]
    standard = form.standard_fields
    assert form.hook_name and form.hook_class_name.startswith("airflow_provider_readreceipts.hooks.")

    assert standard.port.hidden and standard.url_schema.hidden
    visible = {name: getattr(standard, name) for name in ("host", "login", "password")}
    visible = {name: field for name, field in visible.items() if not (field and field.hidden)}
    assert "password" in visible and "host" in visible
    for name, field in visible.items():
        assert field and field.title and field.placeholder, (
            f"{conn_type}.{name} needs a label and placeholder"
        )

    extras = form.extra_fields
    secrets = {name for name, field in extras.items() if field["schema"].get("format") == "password"}
    assert secrets == SECRET_EXTRAS[conn_type]
    for name, field in extras.items():
        assert field["schema"]["title"] and field["description"], f"{conn_type}.{name} needs a label"
        if name not in secrets:
            # A setting, not a secret: its hint shows and its default is not masked by name.
            assert field["schema"].get("examples"), f"{conn_type}.{name} needs an example"
            assert field["value"] != "***", f"{conn_type}.{name} is masked by Airflow; rename it"

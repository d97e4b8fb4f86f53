"""Settings: the environment variables they read, their checks, and the message a misconfiguration gives."""

import pytest
from pydantic import ValidationError

from lambda_fn.contract.config import ENV_PREFIX, Settings, SettingsError, env_name, get_settings


@pytest.fixture
def environment(monkeypatch):
    """No service variable set, and no settings cached from an earlier test; returns ``monkeypatch``."""
    for field in Settings.model_fields:
        monkeypatch.delenv(env_name(field), raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_env_name_is_the_prefixed_field_and_refuses_unknown_fields():
    assert all(env_name(field) == ENV_PREFIX + field.upper() for field in Settings.model_fields)
    with pytest.raises(KeyError):
        env_name("not_a_setting")


def test_settings_read_the_variables_env_name_gives(environment, tmp_path):
    environment.setenv(env_name("artifacts_uri"), "s3://bucket/prefix/")
    environment.setenv(env_name("cache_dir"), str(tmp_path))
    environment.setenv(env_name("max_k"), "40")
    environment.setenv(env_name("cors_origins"), " https://a.example , https://b.example,")
    settings = get_settings()
    assert settings.artifacts_uri == "s3://bucket/prefix/" and settings.cache_dir == tmp_path
    assert settings.max_k == 40 and settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.resolved_images_uri == "s3://bucket/prefix/images/"  # images default to beside the artifacts


def test_default_k_above_max_k_is_refused_at_start():
    with pytest.raises(ValidationError, match="must not exceed max_k"):
        Settings(artifacts_uri="unused", default_k=20, max_k=10)


def test_default_k_may_equal_max_k_and_defaults_keep_within_it():
    assert Settings(artifacts_uri="unused", default_k=10, max_k=10).default_k == 10
    defaults = Settings(artifacts_uri="unused")
    assert 1 <= defaults.default_k <= defaults.max_k


def test_a_missing_variable_is_named_in_the_error(environment):
    with pytest.raises(SettingsError) as raised:
        get_settings()
    message = str(raised.value)
    assert env_name("artifacts_uri") in message and "Field required" in message


def test_an_invalid_value_is_named_in_the_error(environment):
    environment.setenv(env_name("artifacts_uri"), "s3://bucket/prefix/")
    environment.setenv(env_name("max_k"), "many")
    with pytest.raises(SettingsError, match=env_name("max_k")):
        get_settings()

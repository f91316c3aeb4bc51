import tomllib
from pathlib import Path

import pytest

from flowlearn.conf import ConfigError, load_settings, settings_from_dict, versions
from flowlearn.contracts.spec import ModelSpecs


def test_defaults_load_and_validate():
    s = load_settings(env={})
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.flink.rest_host == "127.0.0.1"  # loopback unless deliberately exposed
    assert ModelSpecs(s).model_spec("demo").n_features == 10
    assert s.stack.home.is_absolute()


def test_environment_overrides_nested_keys():
    s = load_settings(
        env={"FLOWLEARN__REDIS__PORT": "6400", "FLOWLEARN__KAFKA__TOPICS__DLQ": "x.dlq"}
    )
    assert s.redis.port == 6400
    assert s.kafka.topics.dlq == "x.dlq"


def test_file_layer(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text('[job]\nbatch_size = 8\n[models.other]\ntype = "linear"\nn_features = 3\n')
    s = load_settings(f, env={})
    assert s.job.batch_size == 8
    assert ModelSpecs(s).models["other"].type == "linear"
    assert "demo" in ModelSpecs(s).models  # defaults kept


@pytest.mark.parametrize(
    "env, message",
    [
        ({"FLOWLEARN__REDIS__PORT": "99999"}, "redis.port: port 99999"),
        ({"FLOWLEARN__REDIS__PORT": "abc"}, "redis.port: cannot read 'abc' as int"),
        ({"FLOWLEARN__REDIS__NOPE": "1"}, r"redis: unknown key\(s\) \['nope'\]"),
        (
            {"FLOWLEARN__KAFKA__SECURITY_PROTOCOL": "SASL_SSL"},
            "needs kafka.sasl_username and kafka.sasl_password",
        ),
        ({"FLOWLEARN__KAFKA__SECURITY_PROTOCOL": "TLS"}, "kafka.security_protocol"),
        ({"FLOWLEARN__KAFKA__SSL_CA_FILE": "/etc/hostname"}, "PLAINTEXT has no TLS"),
        (
            {"FLOWLEARN__REDIS__USERNAME": "fl", "FLOWLEARN__REDIS__PASSWORD": ""},
            "redis.username needs redis.password",
        ),
        ({"FLOWLEARN__REDIS__TLS_CA_FILE": "/etc/hostname"}, "redis.tls is false"),
        (
            {"FLOWLEARN__REDIS__TLS": "true", "FLOWLEARN__REDIS__TLS_CA_FILE": "/nope/ca.crt"},
            "redis.tls_ca_file: no such file",
        ),
        (
            {"FLOWLEARN__REDIS__TLS": "true", "FLOWLEARN__REDIS__TLS_CERT_FILE": "/etc/hostname"},
            "go together",
        ),
        (
            {
                "FLOWLEARN__KAFKA__SECURITY_PROTOCOL": "SSL",
                "FLOWLEARN__KAFKA__BROKER_SSL_CERT_FILE": "/etc/hostname",
            },
            "kafka.broker_ssl_cert_file and kafka.broker_ssl_key_file go together",
        ),
        (
            {
                "FLOWLEARN__KAFKA__BROKER_SSL_CERT_FILE": "/etc/hostname",
                "FLOWLEARN__KAFKA__BROKER_SSL_KEY_FILE": "/etc/hostname",
            },
            "PLAINTEXT has no TLS",
        ),
        ({"FLOWLEARN__PREDICTOR__IDLE_TIMEOUT_S": "0"}, "predictor.idle_timeout_s"),
        ({"FLOWLEARN__PREDICTOR__WORKERS": "-1"}, "predictor.workers"),
        ({"FLOWLEARN__PREDICTOR__LOG_ACKS": "2"}, "is not one of"),
        ({"FLOWLEARN__PREDICTOR__LOG_LINGER_MS": "-1"}, "predictor.log_linger_ms"),
        ({"FLOWLEARN__PREDICTOR__PORT": "9092"}, "both use port 9092"),
        ({"FLOWLEARN__PREDICTOR__GRPC_PORT": "70000"}, "predictor.grpc_port: port 70000"),
        (
            {"FLOWLEARN__PREDICTOR__GRPC_PORT": "8081"},
            "predictor.grpc_port and flink.rest_port both use port 8081",
        ),
        (
            {"FLOWLEARN__PREDICTOR__GRPC_PORT": "8080"},
            "predictor.grpc_port and predictor.port both use port 8080",
        ),
        ({"FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "drop"}, "is not one of"),
        ({"FLOWLEARN__JOB__HOT_MODELS": "0"}, "job.hot_models"),
        ({"FLOWLEARN__JOB__JOIN_BUFFER_ENTRIES": "0"}, "job.join_buffer_entries"),
        ({"FLOWLEARN__MODELS__X__TYPE": "tree"}, "models.x.type"),
        (
            {"FLOWLEARN__FLINK__PARALLELISM": "2"},
            r"flink.taskmanagers x flink.taskmanager_slots must be >= 2 x flink.parallelism "
            r"\(4\), got 1 x 2 = 2",
        ),
        ({"FLOWLEARN__FLINK__TASKMANAGERS": "0"}, "flink.taskmanagers"),
        ({"FLOWLEARN__FLINK__TASKMANAGER_NICE": "20"}, "flink.taskmanager_nice"),
        ({"FLOWLEARN__FLINK__MAX_PARALLELISM": "0"}, "flink.max_parallelism"),
        ({"FLOWLEARN__FLINK__MAX_PARALLELISM": "40000"}, r"flink.max_parallelism must be within"),
        (
            {"FLOWLEARN__FLINK__TASKMANAGERS": "4"},
            "flink.prometheus_ports: 4 ports for a JobManager and 4 TaskManagers",
        ),
    ],
)
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(ConfigError, match=message):
        ModelSpecs(load_settings(env=env))  # model specs are read from the settings there


def test_two_taskmanagers_hold_parallelism_2():
    flink = load_settings(
        env={"FLOWLEARN__FLINK__TASKMANAGERS": "2", "FLOWLEARN__FLINK__PARALLELISM": "2"}
    ).flink
    assert (flink.taskmanagers, flink.parallelism, flink.max_parallelism) == (2, 2, 128)


def test_unknown_model_policy_dlq_gives_no_spec():
    s = load_settings(env={"FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "dlq"})
    assert ModelSpecs(s).model_spec("nope") is None
    assert ModelSpecs(s).model_spec("demo") is not None


def test_round_trip_through_dict():
    s = load_settings(env={})
    assert settings_from_dict(s.to_dict()) == s


def test_password_not_in_repr():
    assert "flowlearn-local" not in repr(load_settings(env={}))


def test_pyproject_pins_the_flink_version_of_conf():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert f"apache-flink=={versions.FLINK_VERSION}" in pyproject["project"]["dependencies"]
    assert versions.KAFKA_CONNECTOR_ARTIFACT.endswith(
        "-" + ".".join(versions.FLINK_VERSION.split(".")[:2])
    )


def test_predictor_options_come_from_conf():
    s = load_settings(
        env={
            "FLOWLEARN__PREDICTOR__LOG_PREDICTIONS": "false",
            "FLOWLEARN__PREDICTOR__AB_FRACTION": "0.25",
            "FLOWLEARN__PREDICTOR__BASELINES__demo": "/tmp/demo-baseline.flc",
        }
    )
    assert s.predictor.log_predictions is False and s.predictor.ab_fraction == 0.25
    assert s.predictor.baselines == {"demo": Path("/tmp/demo-baseline.flc")}
    assert load_settings(env={}).predictor.log_predictions is True
    with pytest.raises(ConfigError, match="ab_fraction"):
        load_settings(env={"FLOWLEARN__PREDICTOR__AB_FRACTION": "1.5"})


def test_a_bool_setting_refuses_a_number(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text("[predictor]\nlog_predictions = 3\n")
    with pytest.raises(ConfigError, match="log_predictions"):
        load_settings(f, env={})


def test_kafka_security_reaches_both_kinds_of_client(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    kafka = load_settings(
        env={
            "FLOWLEARN__KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "FLOWLEARN__KAFKA__SASL_USERNAME": "job",
            "FLOWLEARN__KAFKA__SASL_PASSWORD": 'p"w',
            "FLOWLEARN__KAFKA__SSL_CA_FILE": str(ca),
        }
    ).kafka
    python = kafka.client_options()
    assert python["security_protocol"] == "SASL_SSL" and python["ssl_cafile"] == str(ca)
    assert python["sasl_plain_username"] == "job" and python["sasl_plain_password"] == 'p"w'
    java = kafka.java_properties()
    assert java["sasl.jaas.config"] == (
        "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule"
        ' required username="job" password="p\\"w";'
    )
    assert java["ssl.truststore.type"] == "PEM" and java["ssl.truststore.location"] == str(ca)
    assert 'p"w' not in repr(kafka)  # the password is kept out of reprs (and logs)


def test_a_model_trains_with_its_own_spec_else_the_defaults():
    settings = load_settings(
        env={
            "FLOWLEARN__MODELS__M1__LEARNING_RATE": "0.5",
            "FLOWLEARN__JOB__UNKNOWN_MODEL_POLICY": "dlq",
        }
    )
    specs = ModelSpecs(settings)
    assert specs.spec_of("m1").learning_rate == 0.5
    assert specs.model_spec("other") is None  # refused on parsing ...
    assert specs.spec_of("other") == specs.defaults  # ... so never trained


def test_mlflows_own_tracking_uri_variable_fills_the_setting_and_ours_wins(tmp_path: Path):
    uri = "http://mlflow.example:5000"
    assert load_settings(env={"MLFLOW_TRACKING_URI": uri}).mlflow.tracking_uri == uri
    ours = {"MLFLOW_TRACKING_URI": uri, "FLOWLEARN__MLFLOW__TRACKING_URI": "http://ours:5000"}
    assert load_settings(env=ours).mlflow.tracking_uri == "http://ours:5000"
    config = tmp_path / "c.toml"
    config.write_text('[mlflow]\ntracking_uri = "http://file:5000"\n')
    assert load_settings(config, env={"MLFLOW_TRACKING_URI": uri}).mlflow.tracking_uri == (
        "http://file:5000"
    )
    # Unset or empty: the local store.
    assert load_settings(env={"MLFLOW_TRACKING_URI": ""}).mlflow.tracking_uri == ""

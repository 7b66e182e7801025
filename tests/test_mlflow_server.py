"""The real MLflow server fixture: tracking data in its sqlite store, artifacts in Ceph S3."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from services import CephS3, MLflowServer


def test_run_lands_with_param_metric_and_artifact_in_ceph(
    mlflow_server: MLflowServer, ceph_s3: CephS3, tmp_path: Path
) -> None:
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment_id = client.create_experiment("fixture-smoke")
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    client.log_param(run_id, "lora_rank", "8")
    client.log_metric(run_id, "auc", 0.75, step=1)
    note = tmp_path / "note.txt"
    note.write_text("adapter round 1\n")
    client.log_artifact(run_id, str(note))
    client.set_terminated(run_id)

    # The server has the run, its param and metric, and lists the artifact.
    stored = client.get_run(run_id)
    assert stored.data.params == {"lora_rank": "8"}
    assert stored.data.metrics == {"auc": 0.75}
    assert stored.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]

    # The artifact bytes are an object in the Ceph bucket, under the run's id.
    s3 = ceph_s3.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=mlflow_server.bucket).get("Contents", [])]
    matches = [k for k in keys if k.endswith(f"{run_id}/artifacts/note.txt")]
    assert len(matches) == 1, keys
    body = s3.get_object(Bucket=mlflow_server.bucket, Key=matches[0])["Body"].read()
    assert body == b"adapter round 1\n"

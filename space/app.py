"""Hugging Face Space (and local) entry point: the tumor-classifier web app.

Thin on purpose: the UI, the REST route and the server live in ``tumor_classifier.app``.

    python space/app.py                                   # http://127.0.0.1:7860/
    TUMOR_CLASSIFIER_MODEL=runs/default_model python space/app.py

Environment:
    TUMOR_CLASSIFIER_MODEL: model folder or Hub id (default: the model in the package).
    GRADIO_SERVER_NAME, GRADIO_SERVER_PORT: where to listen (default 127.0.0.1:7860;
        a Space sets 0.0.0.0 so its proxy can reach the app).
"""

import os

# Before anything imports huggingface_hub or gradio: no telemetry, no analytics.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from tumor_classifier.app import build_app, load_classifier  # noqa: E402

classifier = load_classifier(os.environ.get("TUMOR_CLASSIFIER_MODEL") or None)
app = build_app(classifier)  # also servable with `uvicorn app:app` from this folder

if __name__ == "__main__":
    import uvicorn

    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    print(f"tumor-classifier app on http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")

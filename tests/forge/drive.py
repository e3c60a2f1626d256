"""Click the Unlearn tab's button through Gradio's API, as the page does: ``drive.py URL TASK_ID VALUES_JSON``.

Runs with Forge's own Python (its gradio_client speaks its Gradio). VALUES_JSON is the form's values in the page's
order (rgd_ui.form.FORM_FIELDS). Prints the run's outputs as one JSON line: {"chart": a path or null, "status": the
outcome HTML}.
"""

import json
import sys

from gradio_client import Client

url, task_id, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = Client(url, verbose=False)
chart, _checkpoints, status = client.predict(task_id, *values, api_name="/rgd_unlearn")
print(json.dumps({"chart": chart if isinstance(chart, str) else None, "status": status}))

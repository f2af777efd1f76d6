#!/usr/bin/env bash
# CNET Agent ML model deployment walk-through (the seed guide's "使用演示脚本").
#
# Deploys the example linear regression model to a running agent, follows its training,
# asks for a prediction both as a prediction task and synchronously (?wait=true), shows the
# model's logs and lists the deployed models. With --with-nn it does the same for the
# neural network example.
#
# Usage (from the repository root, with an agent already running there, e.g.
# `./bin/cnet-agent -config config.yaml`):
#
#   examples/ml_deployment_demo.sh [--with-nn]
#
# The paths in the deploy bodies are relative to the agent's working directory (the
# repository root); this script itself reads no local files.
#
# Environment:
#   AGENT_URL       agent base URL                  (default http://localhost:8080)
#   CNET_API_TOKEN  bearer token, if the agent requires one (default: none)
#   WITH_NN=1       same as --with-nn
#   TRAIN_TIMEOUT   seconds to wait for the linear regression training (default 120)
#   NN_TIMEOUT      seconds to wait for the neural network training    (default 300)
#   PREDICT_TIMEOUT seconds to wait for a prediction task              (default 120)
#   PYTHON          interpreter used to parse JSON  (default python3)
set -euo pipefail
shopt -s inherit_errexit

AGENT_URL="${AGENT_URL:-http://localhost:8080}"
AGENT_URL="${AGENT_URL%/}"
CNET_API_TOKEN="${CNET_API_TOKEN:-}"
WITH_NN="${WITH_NN:-0}"
TRAIN_TIMEOUT="${TRAIN_TIMEOUT:-120}"
NN_TIMEOUT="${NN_TIMEOUT:-300}"
PREDICT_TIMEOUT="${PREDICT_TIMEOUT:-120}"
PYTHON="${PYTHON:-python3}"

usage() {
  sed -n '2,24s/^# \{0,1\}//p' "$0"
}

for arg in "$@"; do
  case "$arg" in
    --with-nn) WITH_NN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) printf 'error: unknown argument: %s (try --help)\n' "$arg" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\nerror: %s\n' "$*" >&2; exit 1; }

command -v curl >/dev/null 2>&1 || die "curl is required"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON is required to parse JSON (set PYTHON=...)"

response_file="$(mktemp)"
trap 'rm -f "$response_file"' EXIT

# api METHOD PATH [JSON_BODY] -> prints the response body; fails with the agent's error
# message on a transport error or a non-2xx status.
api() {
  local method="$1" path="$2" body="${3:-}" code
  local -a args=(-sS -X "$method" -o "$response_file" -w '%{http_code}'
    -H 'Accept: application/json')
  if [[ -n "$CNET_API_TOKEN" ]]; then
    args+=(-H "Authorization: Bearer $CNET_API_TOKEN")
  fi
  if [[ -n "$body" ]]; then
    args+=(-H 'Content-Type: application/json' --data-binary "$body")
  fi
  if ! code="$(curl "${args[@]}" "$AGENT_URL$path")"; then
    die "$method $path: cannot reach the agent at $AGENT_URL (is it running? start it with ./bin/cnet-agent -config config.yaml)"
  fi
  if [[ "$code" != 2?? ]]; then
    die "$method $path answered HTTP $code: $(json_get error <"$response_file" 2>/dev/null || cat "$response_file")"
  fi
  cat "$response_file"
}

# json_get PATH < JSON -> the value at a dotted PATH ("status", "result.prediction");
# strings are printed raw, everything else as JSON; a missing key prints nothing.
json_get() {
  "$PYTHON" -c '
import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1].split("."):
    if isinstance(value, dict):
        value = value.get(key)
    elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
        value = value[int(key)]
    else:
        value = None
    if value is None:
        sys.exit(0)
print(value if isinstance(value, str) else json.dumps(value))
' "$1"
}

# show_logs ID [LINES] -> the model's last log lines (a JSON array of strings), indented.
show_logs() {
  api GET "/api/ml/models/$1/logs?lines=${2:-20}" |
    "$PYTHON" -c 'import json, sys; [print("    | " + line) for line in json.load(sys.stdin)]'
}

# deploy BODY -> prints the new model's id.
deploy() {
  local response id
  response="$(api POST /api/ml/models "$1")"
  id="$(json_get id <<<"$response")"
  [[ -n "$id" ]] || die "deploy answered without an id: $response"
  printf '%s\n' "$id"
}

# wait_for_model ID TIMEOUT -> returns once the training task completed; dies if it failed,
# was stopped, or did not finish in time.
wait_for_model() {
  local id="$1" timeout="$2" deadline=$((SECONDS + $2)) model status progress reason seen=""
  while :; do
    model="$(api GET "/api/ml/models/$id")"
    status="$(json_get status <<<"$model")"
    progress="$(json_get progress <<<"$model")"
    if [[ "$status $progress" != "$seen" ]]; then
      info "status: $status${progress:+, progress: $progress}"
      seen="$status $progress"
    fi
    case "$status" in
      completed)
        info "result: $(json_get result <<<"$model")"
        return 0 ;;
      failed | stopped)
        reason="$(json_get reason <<<"$model")"
        show_logs "$id" 20 || true
        die "training of model $id $status${reason:+: $reason}" ;;
    esac
    ((SECONDS < deadline)) || die "model $id did not finish training within ${timeout}s (status: $status)"
    sleep 1
  done
}

# wait_for_task ID TIMEOUT -> prints the finished task's JSON; dies unless it completed.
wait_for_task() {
  local id="$1" timeout="$2" deadline=$((SECONDS + $2)) task status
  while :; do
    task="$(api GET "/api/tasks/$id")"
    status="$(json_get status <<<"$task")"
    case "$status" in
      completed) printf '%s\n' "$task"; return 0 ;;
      failed | stopped)
        die "prediction task $id is $status: $(json_get reason <<<"$task") $(json_get result.error <<<"$task")" ;;
    esac
    ((SECONDS < deadline)) || die "prediction task $id did not finish within ${timeout}s (status: $status)"
    sleep 0.5
  done
}

# predict_both ID INPUT_JSON -> a prediction task (polled), then a synchronous prediction.
predict_both() {
  local id="$1" input="$2" response pred_id task prediction
  step "Prediction task: POST /api/ml/models/$id/predict {\"input_data\": $input}"
  response="$(api POST "/api/ml/models/$id/predict" "{\"input_data\": $input}")"
  info "$(json_get message <<<"$response")"
  pred_id="$(json_get prediction_task_id <<<"$response")"
  [[ -n "$pred_id" ]] || die "predict answered without a prediction_task_id: $response"
  info "prediction_task_id: $pred_id"
  task="$(wait_for_task "$pred_id" "$PREDICT_TIMEOUT")"
  prediction="$(json_get result.prediction <<<"$task")"
  [[ -n "$prediction" ]] || die "prediction task $pred_id completed without a prediction: $(json_get result <<<"$task")"
  info "prediction: $prediction"

  step "Synchronous prediction: POST /api/ml/models/$id/predict?wait=true"
  response="$(api POST "/api/ml/models/$id/predict?wait=true" "{\"input_data\": $input}")"
  prediction="$(json_get prediction <<<"$response")"
  [[ -n "$prediction" ]] || die "predict?wait=true answered without a prediction: $response"
  info "prediction: $prediction"
}

LR_BODY='{
  "name": "linear-regression-model",
  "model_type": "linear_regression",
  "model_path": "models/linear_regression_model.joblib",
  "script_path": "examples/ml_models/simple_linear_regression.py",
  "command": "python3",
  "args": ["examples/ml_models/simple_linear_regression.py", "train", "models/linear_regression_model.joblib", "1000"],
  "working_dir": ".",
  "env": {
    "PYTHONPATH": "examples/ml_models"
  },
  "resources": {
    "cpu_limit": 1.0,
    "memory_limit": 512000000,
    "disk_limit": 1000000000
  }
}'

NN_BODY='{
  "name": "neural-network-model",
  "model_type": "neural_network",
  "model_path": "models/neural_network_model.h5",
  "script_path": "examples/ml_models/neural_network.py",
  "command": "python3",
  "args": ["examples/ml_models/neural_network.py", "train", "models/neural_network_model.h5", "1000", "50"],
  "working_dir": ".",
  "env": {
    "PYTHONPATH": "examples/ml_models"
  },
  "resources": {
    "cpu_limit": 2.0,
    "memory_limit": 1024000000,
    "disk_limit": 2000000000
  }
}'

step "Checking the agent at $AGENT_URL"
health="$(api GET /api/health)"
info "health: $(json_get status <<<"$health")"

step "Deploying the linear regression model (POST /api/ml/models)"
LR_ID="$(deploy "$LR_BODY")"
info "model id: $LR_ID"

step "Waiting for training to complete (GET /api/ml/models/$LR_ID, up to ${TRAIN_TIMEOUT}s)"
wait_for_model "$LR_ID" "$TRAIN_TIMEOUT"

predict_both "$LR_ID" 5.5

step "Model logs (GET /api/ml/models/$LR_ID/logs?lines=20)"
show_logs "$LR_ID" 20

if [[ "$WITH_NN" == 1 ]]; then
  step "Deploying the neural network model (POST /api/ml/models)"
  NN_ID="$(deploy "$NN_BODY")"
  info "model id: $NN_ID"

  step "Waiting for training to complete (GET /api/ml/models/$NN_ID, up to ${NN_TIMEOUT}s)"
  wait_for_model "$NN_ID" "$NN_TIMEOUT"

  predict_both "$NN_ID" "[1.0, 2.0]"

  step "Model logs (GET /api/ml/models/$NN_ID/logs?lines=20)"
  show_logs "$NN_ID" 20
fi

step "Deployed models (GET /api/ml/models)"
api GET /api/ml/models | "$PYTHON" -c '
import json, sys
models = json.load(sys.stdin)
print("    %-36s  %-26s  %-18s  %-10s  %s" % ("ID", "NAME", "MODEL_TYPE", "STATUS", "PROGRESS"))
for m in models:
    progress = m.get("progress")
    print("    %-36s  %-26s  %-18s  %-10s  %s" % (
        m.get("id"), m.get("name"), m.get("model_type", ""), m.get("status"),
        "" if progress is None else progress))
'

step "Done"
info "stop a model with: curl -X DELETE $AGENT_URL/api/ml/models/<id>"

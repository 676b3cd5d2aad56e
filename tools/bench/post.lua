-- wrk script: POST the body in $WRK_BODY as JSON (tools/bench/run_suite.py sets it per endpoint).
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY")
wrk.headers["Content-Type"] = "application/json"

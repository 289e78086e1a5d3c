"""What several benchmark suites share: processes, the minimal WebSocket client, the
load targets and the results file."""

"""The training loader: windows drawn from decoded segments (`windows`), streamed into batches (`stream`)."""

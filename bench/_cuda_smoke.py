import time, torch
from model.loader.stream import PairStream
from model.loader.windows import PairConfig
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.core.storage import StorageConfig
from pipelines.shards.reader import list_shards
s = PairStream(list_shards("runs/gpu_data/train", StorageConfig()), StorageConfig(), "train", PairConfig(), EXPERT_CLOCK, 1024, seed=0, device="cuda", loader_workers=4)
it = iter(s); t = time.perf_counter(); b = next(it); print("first", time.perf_counter() - t, b["faces"].shape, b["faces"].device, b["segments"])
torch.cuda.synchronize(); t = time.perf_counter(); n = 0
for _ in range(40): b = next(it); n += len(b["labels"])
torch.cuda.synchronize(); print("pairs/s", n / (time.perf_counter() - t), s.counters)

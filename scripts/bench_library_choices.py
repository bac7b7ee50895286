"""Library vs own code for issue #14.6 (docs/INTERFACES.md): GeoJSON geometry writing, training
colour jitter, pydantic import. Run: .venv/bin/python scripts/bench_library_choices.py"""
import json, time, subprocess, sys
import numpy as np
import shapely
from segtme.export.geojson import _ring
rng = np.random.default_rng(0)
# 20k realistic nucleus rings (32 vertices)
t = np.linspace(0, 2*np.pi, 32, endpoint=False)
rings = [np.c_[100*rng.random()*50 + 6*np.cos(t), 100*rng.random()*50 + 5*np.sin(t)] for _ in range(20000)]
polys = shapely.polygons([np.vstack([r, r[:1]]) for r in rings])
# own: dict -> json.dumps
t0 = time.perf_counter(); s1 = json.dumps([{"type": "Polygon", "coordinates": [_ring(r)]} for r in rings]); own = time.perf_counter() - t0
# shapely.to_geojson (polygons built already) -- precision: to_geojson has indent only; rounding via set_precision
t0 = time.perf_counter(); g = shapely.set_precision(polys, 0.001); s2 = "[" + ",".join(shapely.to_geojson(g)) + "]"; shp = time.perf_counter() - t0
t0 = time.perf_counter(); s3 = "[" + ",".join(shapely.to_geojson(polys)) + "]"; shp_raw = time.perf_counter() - t0
print(f"geojson 20k polygons: own _ring+json.dumps {own:.3f}s ({len(s1)/1e6:.1f} MB); shapely.to_geojson+set_precision {shp:.3f}s ({len(s2)/1e6:.1f} MB); to_geojson raw {shp_raw:.3f}s ({len(s3)/1e6:.1f} MB)")
# torchvision v2 ColorJitter vs PIL
from segtme.data.transforms import colour_jitter
img = (rng.random((256, 256, 3))*255).astype(np.uint8)
t0 = time.perf_counter()
for i in range(200): colour_jitter(img, np.random.default_rng(i))
pil = (time.perf_counter()-t0)/200
t0 = time.perf_counter(); import torch; from torchvision.transforms import v2; imp = time.perf_counter()-t0
cj = v2.ColorJitter(0.2, 0.2, 0.2, 0.05); x = torch.from_numpy(img).permute(2, 0, 1)
t0 = time.perf_counter()
for i in range(200): cj(x)
tv = (time.perf_counter()-t0)/200
print(f"colour jitter 256² crop: PIL {pil*1e3:.2f} ms, torchvision v2 {tv*1e3:.2f} ms (+ torchvision import {imp:.2f} s in a process that has torch)")
t0 = time.perf_counter(); import pydantic; pt = time.perf_counter()-t0
print(f"pydantic {pydantic.__version__} import {pt:.3f} s")

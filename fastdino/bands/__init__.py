"""Multispectral runs, the trainer's side: `data.bands` resolved into the config before step 0 (resolve.py) and the
per-band statistics it normalises with (stats.py, what `fastdino stats` computes). The band names, file orders
and readers themselves are the data pipelines' (fastdino.dataloading.band_files). Nothing is imported here."""

"""Spawners: the local quota spawner (embedded default) and QuotaKubeSpawner."""

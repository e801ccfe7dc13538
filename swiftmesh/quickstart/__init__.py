"""``swiftmesh quickstart``: the main job (pull -> SFT -> DPO -> serve -> ask) as a plan of stages
driven through the services' clients.

May import: ``swiftmesh.runtime``, ``swiftmesh.clients``, ``swiftmesh.data``. Never a service's internals.
"""

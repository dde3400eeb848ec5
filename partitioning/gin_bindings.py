"""Registers the partitioning API with gin (import this module to use gin).

The core library never imports gin; gin binds only at the edge. After
``import partitioning.gin_bindings`` (the ``configs/partitioning/*.gin`` files
do this themselves) the following configurables exist under the ``partitioning``
module name:

* ``partitioning.PjitPartitioner``
* ``partitioning.standard_logical_axis_rules``
* ``partitioning.rules_for`` (named rule sets ``dp``, ``mp``, ``2d``, ``fsdp``)
* ``partitioning.mesh_for``
"""

import gin

from partitioning import mesh as _mesh
from partitioning import partitioner as _partitioner
from partitioning import rules as _rules

PjitPartitioner = gin.external_configurable(_partitioner.PjitPartitioner, module="partitioning")
standard_logical_axis_rules = gin.external_configurable(_rules.standard_logical_axis_rules, module="partitioning")
rules_for = gin.external_configurable(_rules.rules_for, module="partitioning")
mesh_for = gin.external_configurable(_mesh.mesh_for, module="partitioning")

#!/usr/bin/env python3
"""Offline validation of the Kubernetes manifests in deploy/k8s and of deploy/docker/Dockerfile.

    validate_k8s.py [--dir deploy/k8s] [--dockerfile F] [--setup_sh F]
                    [--coordinator BIN --worker BIN --cli BIN] [--self_test] [--junit FILE]

Needs the PyPI package kubernetes-validate (pinned in requirements-validate.txt; tools/setup.sh
installs it into ${XDG_CACHE_HOME:-~/.cache}/sigmatune/venv-deploy), which bundles the Kubernetes
JSON schemas and brings jsonschema and PyYAML. Nothing here talks to a cluster or the network.

What is checked (each a test case of its own in the JUnit report):
  * every manifest (*.yaml in --dir, multi-document): built-in kinds against the Kubernetes
    K8S_VERSION schemas of kubernetes-validate in strict mode (unknown fields are errors, as
    with `kubectl apply --validate=strict`); MPIJob (kubeflow.org/v2beta1) against the vendored
    CRD schema schemas/mpijob-v2beta1.json made strict the same way, its metadata against
    ObjectMeta and every replica's template against Kubernetes' PodTemplateSpec, plus the MPI
    Operator's own admission rules (one Launcher replica, restart policies, ...); duplicate keys
    and a metadata.namespace are errors too.
  * kustomization.yaml: its resources all exist and every manifest is listed (except
    secret.example.yaml, deliberately not), nothing else is listed.
  * cross-references: volumes and claims, secrets and the keys used (secret.example.yaml must
    show them all), Service selector and ports, probe ports, `mpirun -np` against the Worker
    replicas, the worker's --coordinator against the Service, paths in flags against mounts.
  * our binaries' flags: every --flag given to sigmatune-coordinator / sigmatune-worker in the
    manifests and in the Dockerfile's CMD must be listed by their --helpfull.
  * example-job.yaml: the sigmatune CLI checks the job spec (`sigmatune submit` validates the spec
    before it dials the coordinator: exit 4 "unreachable" means the spec passed, 2 that it did not).
  * the Dockerfile: the pinned CUDA base images, the builder installs every package of
    tools/setup.sh, the runtime stage installs no -dev package, copies the three binaries, runs as
    uid 1000, exposes 50051, declares the volumes.
  * `kubectl kustomize` renders the directory and the result validates (skipped, and said so,
    where kubectl is not installed).
--self_test then breaks copies of the files on purpose (a misspelled field, a wrong type, an
unknown flag, ...) and checks that each is reported with its file and its field.

Exit status: 0 all passed, 1 a check failed, 2 usage or missing dependency.
"""

import argparse
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from xml.sax.saxutils import escape, quoteattr

K8S_VERSION = "1.31"
MPIJOB_API_VERSION = "kubeflow.org/v2beta1"
MPIJOB_SCHEMA = os.path.join("schemas", "mpijob-v2beta1.json")
# Files in deploy/k8s that are YAML but not manifests to apply.
NOT_MANIFESTS = {
    "kustomization.yaml": "the kustomization",
    "example-job.yaml": "a sigmatune job spec (submitted with the CLI)",
}
# Manifests that are validated but must NOT be kustomization resources.
NOT_RESOURCES = {"secret.example.yaml": "placeholders only: the real secrets are made with kubectl"}
KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "metadata", "resources", "labels", "commonLabels", "commonAnnotations",
    "images", "namespace", "namePrefix", "nameSuffix", "patches", "replicas", "configMapGenerator",
    "secretGenerator", "generatorOptions", "components", "transformers", "generators",
    "buildMetadata", "openapi", "crds", "vars", "replacements", "sortOptions",
}
BUILDER_IMAGE = "nvidia/cuda:13.0.1-devel-ubuntu24.04"
RUNTIME_IMAGE = "nvidia/cuda:13.0.1-runtime-ubuntu24.04"
BINARIES = ("sigmatune-coordinator", "sigmatune-worker", "sigmatune")
IMAGE_VOLUMES = ("/data", "/var/lib/sigmatune", "/etc/sigmatune")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def fail_setup(message):
    print("validate_k8s: " + message, file=sys.stderr)
    sys.exit(2)


try:
    import yaml
    import jsonschema
    from referencing import Registry, Resource
    import kubernetes_validate.utils as kv
except ImportError as error:  # pragma: no cover - depends on the environment
    fail_setup("%s with %s: install the pinned kubernetes-validate with tools/setup.sh (it makes "
               "the virtualenv ${XDG_CACHE_HOME:-~/.cache}/sigmatune/venv-deploy)" % (error, sys.executable))


# ------------------------------------------------------------------------------------------------
# Results


class Case:
    """One test case of the report: a name, the errors found, or the reason it was skipped."""

    def __init__(self, name):
        self.name = name
        self.errors = []
        self.skipped = None
        self.started = time.monotonic()
        self.seconds = 0.0

    def error(self, message):
        self.errors.append(message)

    def done(self):
        self.seconds = time.monotonic() - self.started
        return self


def write_junit(cases, path):
    failures = sum(1 for c in cases if c.errors)
    skipped = sum(1 for c in cases if c.skipped and not c.errors)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<testsuites tests="%d" failures="%d" skipped="%d">' % (len(cases), failures, skipped),
             '<testsuite name="deploy/k8s" tests="%d" failures="%d" skipped="%d">' % (len(cases), failures, skipped)]
    for case in cases:
        result = ' result="skipped"' if case.skipped and not case.errors else ""
        lines.append('<testcase name=%s classname="validate_k8s" time="%.3f"%s>'
                     % (quoteattr(case.name), case.seconds, result))
        if case.errors:
            lines.append('<failure message=%s>' % quoteattr(case.errors[0][:200]))
            lines.append(escape("\n".join(case.errors)))
            lines.append("</failure>")
        elif case.skipped:
            lines.append("<skipped message=%s/>" % quoteattr(case.skipped))
        lines.append("</testcase>")
    lines += ["</testsuite>", "</testsuites>", ""]
    with open(path, "w") as out:
        out.write("\n".join(lines))


# ------------------------------------------------------------------------------------------------
# YAML


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (kubectl's strict decoding does)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found duplicate key %r" % (key,),
                key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_documents(path):
    """The non-empty documents of a YAML file; raises ValueError with the reason."""
    with open(path) as f:
        text = f.read()
    try:
        return [d for d in yaml.load_all(text, Loader=StrictLoader) if d is not None]
    except yaml.YAMLError as error:
        raise ValueError("not valid YAML: %s" % str(error).replace("\n", " "))


def dotted(path):
    return ".".join(str(p) for p in path) or "(top level)"


def resource_name(doc):
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return "%s/%s" % (str(doc.get("kind", "?")).lower(), meta.get("name", "?"))


# ------------------------------------------------------------------------------------------------
# Schemas


class Schemas:
    """Validators for Kubernetes objects (kubernetes-validate's strict schemas) and the MPIJob."""

    _k8s = {}  # (schema dir, file) -> validator, shared by every directory validated

    def __init__(self, k8s_dir, version):
        self.version = version
        versions = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(version)]
        if not versions:
            fail_setup("kubernetes-validate has no schemas for Kubernetes %s" % version)
        self.schema_dir = "kubernetes-json-schema/v%s-local-strict" % versions[-1]
        self.resolved_version = kv.major_minor(versions[-1])
        with open(os.path.join(k8s_dir, MPIJOB_SCHEMA)) as f:
            self.mpijob = jsonschema.Draft202012Validator(strictify(json.load(f)))

    def validator(self, filename):
        key = (self.schema_dir, filename)
        if key not in Schemas._k8s:
            registry_key = (self.schema_dir, "_definitions.json")
            if registry_key not in Schemas._k8s:
                definitions = kv.schema_contents(self.schema_dir + "/_definitions.json", self.version)
                Schemas._k8s[registry_key] = Resource.from_contents(definitions) @ Registry()
            schema = kv.schema_contents("%s/%s" % (self.schema_dir, filename), self.version)
            registry = Resource.from_contents(schema) @ Schemas._k8s[registry_key]
            Schemas._k8s[key] = jsonschema.Draft202012Validator(schema, registry=registry)
        return Schemas._k8s[key]

    def for_object(self, doc):
        """The validator of a built-in kind, or None when kubernetes-validate has no schema."""
        api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", str(doc.get("apiVersion", "")))
        filename = "%s-%s.json" % (str(doc.get("kind", "")).lower(), api)
        try:
            return self.validator(filename)
        except (FileNotFoundError, OSError):
            return None


def strictify(schema):
    """Closes every object schema that lists its properties (additionalProperties: false), unless
    it says x-kubernetes-preserve-unknown-fields: the CRD counterpart of kubernetes-validate's
    strict schemas and of the API server's strict field validation."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def schema_errors(validator, instance, prefix=()):
    errors = []
    for error in validator.iter_errors(instance):
        errors.append((dotted(list(prefix) + list(error.absolute_path)), error.message))
    return sorted(errors)


# ------------------------------------------------------------------------------------------------
# One manifest


def validate_mpijob(doc, schemas):
    errors = schema_errors(schemas.mpijob, doc)
    if isinstance(doc.get("metadata"), dict):
        errors += schema_errors(schemas.validator("objectmeta-meta-v1.json"), doc["metadata"], ["metadata"])
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    replica_specs = spec.get("mpiReplicaSpecs") if isinstance(spec.get("mpiReplicaSpecs"), dict) else {}
    for rtype, rspec in sorted(replica_specs.items()):
        if isinstance(rspec, dict) and isinstance(rspec.get("template"), dict):
            errors += schema_errors(schemas.validator("podtemplatespec-v1.json"), rspec["template"],
                                    ["spec", "mpiReplicaSpecs", rtype, "template"])
    errors += mpijob_rules(doc, spec, replica_specs)
    return errors


def mpijob_rules(doc, spec, replica_specs):
    """The MPI Operator's admission rules for v2beta1 (after its defaults), as errors."""
    errors = []
    base = ["spec", "mpiReplicaSpecs"]
    for rtype in replica_specs:
        if rtype not in ("Launcher", "Worker"):
            errors.append((dotted(base + [rtype]), "unknown replica type (Launcher or Worker)"))
    launcher = replica_specs.get("Launcher")
    if not isinstance(launcher, dict):
        errors.append((dotted(base + ["Launcher"]), "must have Launcher replica spec"))
    for rtype, rspec in replica_specs.items():
        if not isinstance(rspec, dict) or rtype not in ("Launcher", "Worker"):
            continue
        path = base + [rtype]
        replicas = rspec.get("replicas")
        if replicas is None:
            errors.append((dotted(path + ["replicas"]), "must define number of replicas"))
        elif isinstance(replicas, int) and rtype == "Launcher" and replicas != 1:
            errors.append((dotted(path + ["replicas"]), "must be 1 (got %d)" % replicas))
        elif isinstance(replicas, int) and rtype == "Worker" and replicas < 1:
            errors.append((dotted(path + ["replicas"]), "must be greater than or equal to 1"))
        policy = rspec.get("restartPolicy", "OnFailure" if rtype == "Launcher" else "Never")
        if policy not in ("Never", "OnFailure"):
            errors.append((dotted(path + ["restartPolicy"]),
                           "unsupported value %r: the operator accepts Never or OnFailure" % policy))
        containers = (((rspec.get("template") or {}).get("spec") or {}).get("containers"))
        if not containers:
            errors.append((dotted(path + ["template", "spec", "containers"]), "must define at least one container"))
    slots = spec.get("slotsPerWorker", 1)
    if isinstance(slots, int) and slots < 1:
        errors.append(("spec.slotsPerWorker", "must be at least 1"))
    if "sshAuthMountPath" in spec and not spec.get("sshAuthMountPath"):
        errors.append(("spec.sshAuthMountPath", "must have a mount path for SSH credentials"))
    run_policy = spec.get("runPolicy") if isinstance(spec.get("runPolicy"), dict) else {}
    for field in ("ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit"):
        if isinstance(run_policy.get(field), int) and run_policy[field] < 0:
            errors.append(("spec.runPolicy." + field, "must be greater than or equal to 0"))
    workers = replica_specs.get("Worker") if isinstance(replica_specs.get("Worker"), dict) else {}
    count = workers.get("replicas", 1) if isinstance(workers.get("replicas", 1), int) else 1
    name = str((doc.get("metadata") or {}).get("name", ""))
    hostname = "%s-worker-%d" % (name, max(count, 1) - 1)
    if len(hostname) > 63 or not DNS1123_LABEL.match(hostname):
        errors.append(("metadata.name", "worker pods would get the invalid DNS label %r" % hostname))
    return errors


def validate_manifest_file(path, schemas, case):
    """Schema-validates every document of one manifest file; returns the documents."""
    filename = os.path.basename(path)
    try:
        docs = load_documents(path)
    except ValueError as error:
        case.error("%s: %s" % (filename, error))
        return []
    if not docs:
        case.error("%s: no Kubernetes object in the file" % filename)
    for doc in docs:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            case.error("%s: a document without apiVersion/kind is not a Kubernetes object" % filename)
            continue
        where = "%s: %s" % (filename, resource_name(doc))
        if not (doc.get("metadata") or {}).get("name"):
            case.error("%s: metadata.name: required" % where)
        if "namespace" in (doc.get("metadata") or {}):
            case.error("%s: metadata.namespace: the manifests are namespace-less (apply with -n or "
                       "an overlay's namespace:)" % where)
        if doc["apiVersion"] == MPIJOB_API_VERSION and doc["kind"] == "MPIJob":
            errors = validate_mpijob(doc, schemas)
        else:
            validator = schemas.for_object(doc)
            if validator is None:
                case.error("%s: no schema for %s %s in Kubernetes %s" % (
                    where, doc["apiVersion"], doc["kind"], schemas.resolved_version))
                continue
            errors = schema_errors(validator, doc)
        for field, message in errors:
            case.error("%s: %s: %s" % (where, field, message))
    return docs


# ------------------------------------------------------------------------------------------------
# Cross-references between the manifests


def pod_specs(doc):
    """(label, pod template) pairs of a workload object."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return [(kind, spec.get("template") or {})]
    if kind == "MPIJob":
        return [("MPIJob %s" % rtype, (rspec or {}).get("template") or {})
                for rtype, rspec in sorted((spec.get("mpiReplicaSpecs") or {}).items())]
    return []


def flag_values(args, name):
    values = []
    for arg in args:
        if isinstance(arg, str) and arg.startswith("--%s=" % name):
            values.append(arg.split("=", 1)[1])
    return values


def under_mount(path, container):
    for mount in container.get("volumeMounts") or []:
        root = str(mount.get("mountPath", "")).rstrip("/")
        if path == root or path.startswith(root + "/"):
            return mount
    return None


def mpirun_program(args):
    """(np, -x variables, program argv) of an mpirun argument list."""
    one_value = {"-np", "-n", "--np", "-x", "--bind-to", "--map-by", "--rank-by", "--hostfile", "-hostfile",
                 "-H", "--host", "--prefix", "-wdir", "--wdir"}
    np_value, exported, index = None, [], 0
    while index < len(args):
        arg = str(args[index])
        value = str(args[index + 1]) if index + 1 < len(args) else None
        if arg in ("-np", "-n", "--np"):
            np_value = value
        elif arg == "-x" and value is not None:
            exported.append(value.split("=", 1)[0])
        if arg in ("--mca", "-mca"):
            index += 3
        elif arg in one_value:
            index += 2
        elif arg.startswith("-"):
            index += 1
        else:
            return np_value, exported, [str(a) for a in args[index:]]
    return np_value, exported, []


def check_references(files, case, flags, image_env=("PATH", "LD_LIBRARY_PATH")):
    """files: {filename: [docs]} of the kustomization's resources plus secret.example.yaml."""
    objects = {}
    for filename, docs in files.items():
        for doc in docs:
            if isinstance(doc, dict):
                key = (doc.get("kind"), (doc.get("metadata") or {}).get("name"))
                objects[key] = (filename, doc)
    secrets = {name: doc for (kind, name), (_, doc) in objects.items() if kind == "Secret"}
    claims = {name for (kind, name) in objects if kind == "PersistentVolumeClaim"}
    services = [(f, d) for (k, _), (f, d) in objects.items() if k == "Service"]

    def secret_has(where, name, key):
        if name not in secrets:
            case.error("%s: secret %r is not described in secret.example.yaml" % (where, name))
            return
        doc = secrets[name]
        keys = set((doc.get("stringData") or {}).keys()) | set((doc.get("data") or {}).keys())
        if key is not None and key not in keys:
            case.error("%s: secret %r has no key %r in secret.example.yaml (it has %s)"
                       % (where, name, key, ", ".join(sorted(keys))))

    pods = []  # (filename, object, label, template)
    for (kind, name), (filename, doc) in sorted(objects.items(), key=lambda item: str(item[0])):
        for label, template in pod_specs(doc):
            pods.append((filename, doc, label, template))

    for filename, doc, label, template in pods:
        where = "%s: %s (%s)" % (filename, resource_name(doc), label)
        spec = template.get("spec") or {}
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        for volume in volumes.values():
            pvc = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if pvc is not None and pvc not in claims:
                case.error("%s: volume %r: claim %r is not defined by any resource" % (where, volume.get("name"), pvc))
            secret = volume.get("secret")
            if secret is not None:
                for item in secret.get("items") or [None]:
                    secret_has("%s: volume %r" % (where, volume.get("name")), secret.get("secretName"),
                               item.get("key") if item else None)
        for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            cwhere = "%s: container %r" % (where, container.get("name"))
            for mount in container.get("volumeMounts") or []:
                if mount.get("name") not in volumes:
                    case.error("%s: volumeMounts: no volume named %r" % (cwhere, mount.get("name")))
            declared = [p for p in container.get("ports") or [] if isinstance(p, dict)]
            ports = {p.get("name") for p in declared if isinstance(p.get("name"), str)}
            numbers = {p.get("containerPort") for p in declared if isinstance(p.get("containerPort"), int)}
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = container.get(probe_name) or {}
                for handler in ("tcpSocket", "httpGet", "grpc"):
                    port = (probe.get(handler) or {}).get("port")
                    if isinstance(port, str) and port not in ports:
                        case.error("%s: %s.%s.port: no container port named %r" % (cwhere, probe_name, handler, port))
                    if isinstance(port, int) and port not in numbers:
                        case.error("%s: %s.%s.port: %d is not a containerPort" % (cwhere, probe_name, handler, port))
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret_has("%s: env %s" % (cwhere, env.get("name")), ref.get("name"), ref.get("key"))
            argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
            if argv and os.path.basename(argv[0]) == "sigmatune-coordinator":
                check_coordinator(cwhere, argv, container, flags, case)
            if argv and os.path.basename(argv[0]) == "mpirun":
                check_launcher(cwhere, doc, argv, container, pods, services, flags, case, image_env)
        if doc.get("kind") == "Deployment":
            selector = ((doc.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            for key, value in selector.items():
                if labels.get(key) != value:
                    case.error("%s: spec.selector.matchLabels.%s=%r does not match the pod template's labels"
                               % (where, key, value))

    for filename, service in services:
        where = "%s: %s" % (filename, resource_name(service))
        selector = (service.get("spec") or {}).get("selector") or {}
        matched = [(f, d, l, t) for f, d, l, t in pods
                   if selector and all(((t.get("metadata") or {}).get("labels") or {}).get(k) == v
                                       for k, v in selector.items())]
        if not matched:
            case.error("%s: spec.selector matches no pod template" % where)
        for port in (service.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for _, _, label, template in matched:
                containers = (template.get("spec") or {}).get("containers") or []
                names = {p.get("name") for c in containers for p in c.get("ports") or []}
                numbers = {p.get("containerPort") for c in containers for p in c.get("ports") or []}
                if target not in names and target not in numbers:
                    case.error("%s: spec.ports.%s.targetPort %r is not a port of %s"
                               % (where, port.get("name"), target, label))


def check_flags(where, program, argv, flags, case):
    known = flags.get(program)
    if known is None:
        return
    for arg in argv:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            if name not in known:
                case.error("%s: %s has no flag --%s (see %s --helpfull)" % (where, program, name, program))


def check_coordinator(where, argv, container, flags, case):
    check_flags(where, "sigmatune-coordinator", argv[1:], flags, case)
    for flag in ("tenants_file", "tls_cert", "tls_key"):
        for value in flag_values(argv, flag):
            if not under_mount(value, container):
                case.error("%s: --%s=%s is on no mounted volume" % (where, flag, value))
    for value in flag_values(argv, "db"):
        if not under_mount(os.path.dirname(value), container):
            case.error("%s: --db=%s: its directory is on no mounted volume (the job store must persist)"
                       % (where, value))
    for value in flag_values(argv, "data_root"):
        for root in value.split(","):
            if not under_mount(root, container):
                case.error("%s: --data_root=%s is on no mounted volume" % (where, root))
    if not flag_values(argv, "tenants_file"):
        case.error("%s: no --tenants_file: the coordinator refuses a non-loopback --listen without it" % where)


def check_launcher(where, doc, argv, container, pods, services, flags, case, image_env):
    np_value, exported, program = mpirun_program(argv[1:])
    spec = doc.get("spec") or {}
    worker = (spec.get("mpiReplicaSpecs") or {}).get("Worker") or {}
    expected = worker.get("replicas", 0) * spec.get("slotsPerWorker", 1) if isinstance(worker.get("replicas", 0), int) else None
    try:
        np_int = int(np_value) if np_value is not None else None
    except ValueError:
        np_int = None
    if np_int is None:
        case.error("%s: mpirun has no numeric -np" % where)
    elif expected is not None and np_int != expected:
        case.error("%s: mpirun -np %d but Worker replicas x slotsPerWorker = %d" % (where, np_int, expected))
    env_names = {e.get("name") for e in container.get("env") or []}
    for name in exported:
        if name not in env_names and name not in image_env:
            case.error("%s: mpirun -x %s: the launcher does not set %s" % (where, name, name))
    if not program or os.path.basename(program[0]) != "sigmatune-worker":
        case.error("%s: mpirun does not start sigmatune-worker (%r)" % (where, " ".join(program)))
        return
    check_flags(where, "sigmatune-worker", program[1:], flags, case)
    if "SIGMATUNE_TOKEN" not in exported and not flag_values(program, "token_file"):
        case.error("%s: the ranks get no token (mpirun -x SIGMATUNE_TOKEN or --token_file)" % where)
    for value in flag_values(program, "coordinator"):
        host, _, port = value.rpartition(":")
        known = [(f, s) for f, s in services if (s.get("metadata") or {}).get("name") == host.split(".")[0]]
        if not known:
            case.error("%s: --coordinator=%s: no Service named %r" % (where, value, host.split(".")[0]))
        for _, service in known:
            ports = [str(p.get("port")) for p in (service.get("spec") or {}).get("ports") or []]
            if port not in ports:
                case.error("%s: --coordinator=%s: Service %s has ports %s" % (where, value, host, ", ".join(ports)))
    worker_pods = [t for f, d, label, t in pods if d is doc and label.endswith("Worker")]
    for path_flag in ("tls_ca", "token_file"):
        for value in flag_values(program, path_flag):
            for template in worker_pods:
                for c in (template.get("spec") or {}).get("containers") or []:
                    if not under_mount(value, c):
                        case.error("%s: --%s=%s: not mounted in the Worker pods, where the ranks run"
                                   % (where, path_flag, value))


# ------------------------------------------------------------------------------------------------
# The kustomization, the example job, the Dockerfile


def check_kustomization(k8s_dir, manifests, case):
    path = os.path.join(k8s_dir, "kustomization.yaml")
    try:
        docs = load_documents(path)
    except (ValueError, OSError) as error:
        case.error("kustomization.yaml: %s" % error)
        return []
    if len(docs) != 1 or not isinstance(docs[0], dict):
        case.error("kustomization.yaml: must hold exactly one mapping")
        return []
    k = docs[0]
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        case.error("kustomization.yaml: apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization")
    for field in sorted(set(k) - KUSTOMIZATION_FIELDS):
        case.error("kustomization.yaml: %s: unknown field" % field)
    resources = k.get("resources")
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        case.error("kustomization.yaml: resources: must be a list of file names")
        return []
    for resource in resources:
        if len([r for r in resources if r == resource]) > 1:
            case.error("kustomization.yaml: resources: %s is listed twice" % resource)
        if not os.path.isfile(os.path.join(k8s_dir, resource)):
            case.error("kustomization.yaml: resources: %s does not exist" % resource)
        elif resource in NOT_RESOURCES:
            case.error("kustomization.yaml: resources: %s must not be listed (%s)" % (resource, NOT_RESOURCES[resource]))
        elif resource in NOT_MANIFESTS:
            case.error("kustomization.yaml: resources: %s is %s, not a manifest" % (resource, NOT_MANIFESTS[resource]))
    for manifest in manifests:
        if manifest not in resources and manifest not in NOT_RESOURCES:
            case.error("kustomization.yaml: resources: %s is a manifest in this directory but is not listed" % manifest)
    if "namespace" in k:
        case.error("kustomization.yaml: namespace: the base stays namespace-less (set it in an overlay)")
    return [r for r in dict.fromkeys(resources) if r in manifests]


def check_example_job(path, cli, case):
    filename = os.path.basename(path)
    try:
        docs = load_documents(path)
    except (ValueError, OSError) as error:
        case.error("%s: %s" % (filename, error))
        return
    if len(docs) != 1 or not isinstance(docs[0], dict):
        case.error("%s: a job spec is exactly one YAML mapping" % filename)
        return
    spec = docs[0]
    if "apiVersion" in spec or "kind" in spec:
        case.error("%s: a sigmatune job spec has no apiVersion/kind" % filename)
    for field in ("base_model", "calibration.path", "datasets", "eval_datasets", "output_dir", "cache_dir"):
        values = []
        head, _, tail = field.partition(".")
        node = spec.get(head)
        if isinstance(node, list):
            values = [d.get("path") for d in node if isinstance(d, dict)]
        elif isinstance(node, dict) and tail:
            values = [node.get(tail)]
        elif isinstance(node, str):
            values = [node]
        for value in values:
            if isinstance(value, str) and (value.startswith("/") or value.startswith("~")):
                case.error("%s: %s: %r: paths must be relative to the data root (/data)" % (filename, field, value))
    if cli is None:
        case.skipped = "the sigmatune CLI was not given (--cli): the spec itself was not checked"
        return
    with open(path, "rb") as f:
        key = (cli, f.read())
    if key not in _CLI_VERDICTS:
        # `submit` checks the spec, then dials the coordinator: an address that cannot exist makes
        # it stop there (exit 4). Exit 2 is a spec error, printed with the field.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir()}
        result = subprocess.run([cli, "--server=unix:/nonexistent/sigmatune-validate.sock", "submit", path],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=60)
        _CLI_VERDICTS[key] = (result.returncode, result.stdout.strip().replace(path, filename))
    returncode, output = _CLI_VERDICTS[key]
    if returncode != 4:
        case.error("%s: the sigmatune CLI refuses the job spec (exit %d): %s" % (filename, returncode, output))


_CLI_VERDICTS = {}  # (cli, spec bytes) -> (exit status, output)


def dockerfile_instructions(path):
    """(instruction, arguments, stage index) of a Dockerfile; comment lines dropped, lines joined."""
    instructions, current, stage = [], "", -1
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            current += line
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                word = word.upper()
                if word == "FROM":
                    stage += 1
                instructions.append((word, rest.strip(), stage))
            current = ""
    return instructions


def apt_packages(command):
    """Packages of the `apt-get install` commands in a RUN line."""
    packages = []
    for part in re.split(r"&&|;|\|\|", command):
        words = part.split()
        if "apt-get" in words and "install" in words[words.index("apt-get"):]:
            start = words.index("install", words.index("apt-get")) + 1
            packages += [w for w in words[start:] if not w.startswith("-") and w not in (";", "fi")]
    return packages


def setup_packages(path):
    with open(path) as f:
        text = f.read()
    match = re.search(r"^PACKAGES=\((.*?)^\)", text, re.S | re.M)
    if not match:
        return None
    words = []
    for line in match.group(1).splitlines():
        words += line.split("#", 1)[0].split()
    return words


def check_dockerfile(path, setup_sh, flags, case, setup_case=None):
    name = "deploy/docker/Dockerfile"
    try:
        instructions = dockerfile_instructions(path)
    except OSError as error:
        case.error("%s: %s" % (name, error))
        return
    args = {}
    for word, rest, stage in instructions:
        if word == "ARG" and stage == -1 and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    froms = [rest for word, rest, _ in instructions if word == "FROM"]

    def expand(text):
        return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)

    if len(froms) != 2:
        case.error("%s: expected two stages (builder, runtime), found %d FROM" % (name, len(froms)))
        return
    for want, got, label in ((BUILDER_IMAGE, froms[0], "builder"), (RUNTIME_IMAGE, froms[1], "runtime")):
        image = expand(got.split()[0])
        if image != want:
            case.error("%s: %s stage: FROM %s, expected %s" % (name, label, image, want))
    builder = [p for w, r, s in instructions if w == "RUN" and s == 0 for p in apt_packages(r)]
    runtime = [p for w, r, s in instructions if w == "RUN" and s == 1 for p in apt_packages(r)]
    if setup_case is not None:
        wanted = setup_packages(setup_sh) if setup_sh else None
        if not setup_sh:
            setup_case.skipped = "tools/setup.sh was not found (give --setup_sh)"
        elif wanted is None:
            setup_case.error("%s: cannot read the PACKAGES list of %s" % (name, setup_sh))
        else:
            for package in wanted:
                if package not in builder:
                    setup_case.error("%s: builder stage: apt-get install lacks %s (tools/setup.sh installs it; "
                                     "the workspace's @system repository needs it)" % (name, package))
    for package in runtime:
        if package.endswith("-dev"):
            case.error("%s: runtime stage: %s is a development package (runtime libraries only)" % (name, package))
    for needed in ("openmpi-bin", "libnccl2"):
        if needed not in runtime:
            case.error("%s: runtime stage: apt-get install lacks %s" % (name, needed))
    runtime_words = [(w, r) for w, r, s in instructions if s == 1]
    copies = " ".join(r for w, r in runtime_words if w == "COPY" and "--from=builder" in r)
    for binary in BINARIES:
        if not re.search(r"/%s(\s|$)" % re.escape(binary), copies) or "/usr/local/bin" not in copies:
            case.error("%s: runtime stage: %s is not copied from the builder to /usr/local/bin" % (name, binary))
    users = [r for w, r in runtime_words if w == "USER"]
    if not users or users[-1].split(":")[0] not in ("1000", "sigmatune"):
        case.error("%s: runtime stage: must end as USER 1000 (non-root)" % name)
    if not any(w == "EXPOSE" and "50051" in r.split() for w, r in runtime_words):
        case.error("%s: runtime stage: EXPOSE 50051 missing" % name)
    volumes = " ".join(r for w, r in runtime_words if w == "VOLUME")
    for volume in IMAGE_VOLUMES:
        if '"%s"' % volume not in volumes and volume not in volumes.split():
            case.error("%s: runtime stage: VOLUME %s not declared" % (name, volume))
    if not any(w == "WORKDIR" for w, r in runtime_words):
        case.error("%s: runtime stage: no WORKDIR" % name)
    if any(w == "ENTRYPOINT" for w, r in runtime_words):
        case.error("%s: runtime stage: no ENTRYPOINT wanted (a plain CMD runs the coordinator)" % name)
    cmds = [r for w, r in runtime_words if w == "CMD"]
    if not cmds:
        case.error("%s: runtime stage: no CMD" % name)
        return
    try:
        argv = json.loads(cmds[-1])
    except ValueError:
        case.error("%s: CMD must be the exec (JSON array) form" % name)
        return
    if not argv or argv[0] != "sigmatune-coordinator":
        case.error("%s: CMD should run sigmatune-coordinator" % name)
    else:
        check_flags("%s: CMD" % name, "sigmatune-coordinator", argv[1:], flags, case)


# ------------------------------------------------------------------------------------------------
# Flags of our binaries


def binary_flags(coordinator, worker, cli):
    flags = {}
    for program, path in (("sigmatune-coordinator", coordinator), ("sigmatune-worker", worker)):
        if path:
            result = subprocess.run([path, "--helpfull"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, timeout=60)
            names = set(re.findall(r"^\s+--([A-Za-z0-9_]+) \(", result.stdout, re.M))
            if not names:
                fail_setup("%s --helpfull listed no flags:\n%s" % (path, result.stdout[-2000:]))
            flags[program] = names
    if cli:
        result = subprocess.run([cli, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        flags["sigmatune"] = set(re.findall(r"^\s+--([A-Za-z0-9_]+)", result.stdout, re.M))
    return flags


# ------------------------------------------------------------------------------------------------
# The whole directory


def yaml_files(k8s_dir):
    return sorted(f for f in os.listdir(k8s_dir)
                  if f.endswith((".yaml", ".yml")) and os.path.isfile(os.path.join(k8s_dir, f)))


def validate_all(k8s_dir, dockerfile, setup_sh, flags, cli, version, kubectl=True):
    cases = []
    schemas = Schemas(k8s_dir, version)
    manifests = [f for f in yaml_files(k8s_dir) if f not in NOT_MANIFESTS]
    loaded = {}
    for filename in manifests:
        case = Case("manifest %s (Kubernetes %s, strict)" % (filename, schemas.resolved_version))
        loaded[filename] = validate_manifest_file(os.path.join(k8s_dir, filename), schemas, case)
        cases.append(case.done())

    case = Case("kustomization.yaml lists every manifest and only existing files")
    resources = check_kustomization(k8s_dir, manifests, case)
    cases.append(case.done())

    case = Case("cross-references: volumes, claims, secrets, ports, mpirun, flags, mounts")
    check_references({f: loaded.get(f, []) for f in resources + [f for f in NOT_RESOURCES if f in loaded]},
                     case, flags)
    for program in ("sigmatune-coordinator", "sigmatune-worker"):
        if program not in flags:
            case.error("%s was not given: its flags were not checked" % program)
    cases.append(case.done())

    case = Case("example-job.yaml is a valid sigmatune job spec")
    example = os.path.join(k8s_dir, "example-job.yaml")
    if os.path.isfile(example):
        check_example_job(example, cli, case)
    else:
        case.error("example-job.yaml is missing")
    cases.append(case.done())

    case = Case("deploy/docker/Dockerfile: stages, packages, user, port, volumes, CMD flags")
    setup_case = Case("deploy/docker/Dockerfile: the builder installs every package of tools/setup.sh")
    if dockerfile:
        check_dockerfile(dockerfile, setup_sh, flags, case, setup_case)
    else:
        case.skipped = setup_case.skipped = "no --dockerfile given"
    cases.append(case.done())
    cases.append(setup_case.done())

    if kubectl:
        cases.append(check_kustomize_build(k8s_dir, schemas).done())
    return cases


def check_kustomize_build(k8s_dir, schemas):
    case = Case("kubectl kustomize renders deploy/k8s and the result validates")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        case.skipped = "kubectl is not installed here, so the kustomization was not rendered"
        return case
    with tempfile.TemporaryDirectory() as home:
        # A plain copy: kustomize does not follow the symlinks of Bazel's runfiles.
        tree = os.path.join(home, "k8s")
        shutil.copytree(k8s_dir, tree)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "KUBECONFIG": os.path.join(home, "none")}
        result = subprocess.run([kubectl, "kustomize", tree], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, timeout=120)
    if result.returncode != 0:
        case.error("kubectl kustomize failed: %s" % result.stderr.strip().replace(tree, "deploy/k8s"))
        return case
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as out:
        out.write(result.stdout)
        rendered = out.name
    try:
        docs = validate_manifest_file(rendered, schemas, case)
    finally:
        os.unlink(rendered)
    case.errors = [e.replace(os.path.basename(rendered), "(kustomize output)") for e in case.errors]
    for doc in docs:
        labels = (doc.get("metadata") or {}).get("labels") or {}
        if labels.get("app.kubernetes.io/part-of") != "sigmatune":
            case.error("(kustomize output): %s: the kustomization's labels were not applied" % resource_name(doc))
        for _, template in pod_specs(doc):
            for container in (template.get("spec") or {}).get("containers") or []:
                if container.get("image") == "sigmatune":
                    case.error("(kustomize output): %s: container %r: the images: entry was not applied"
                               % (resource_name(doc), container.get("name")))
    return case


# ------------------------------------------------------------------------------------------------


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=here, help="the manifests (default: this script's directory)")
    parser.add_argument("--dockerfile", default=os.path.join(here, "..", "docker", "Dockerfile"))
    parser.add_argument("--setup_sh", default=os.path.join(here, "..", "..", "tools", "setup.sh"))
    built = os.path.join(here, "..", "..", "bazel-bin")

    def default_binary(path):
        return path if os.path.isfile(path) else None

    parser.add_argument("--coordinator", default=default_binary(os.path.join(built, "server", "sigmatune-coordinator")),
                        help="sigmatune-coordinator binary, its flags are checked (default: bazel-bin's)")
    parser.add_argument("--worker", default=default_binary(os.path.join(built, "worker", "sigmatune-worker")),
                        help="sigmatune-worker binary (default: bazel-bin's)")
    parser.add_argument("--cli", default=default_binary(os.path.join(built, "client", "sigmatune")),
                        help="sigmatune CLI binary, checks example-job.yaml (default: bazel-bin's)")
    parser.add_argument("--kubernetes_version", default=K8S_VERSION)
    parser.add_argument("--self_test", action="store_true", help="also prove broken copies are caught")
    parser.add_argument("--junit", default=os.environ.get("XML_OUTPUT_FILE"), help="write a JUnit XML report here")
    args = parser.parse_args()

    dockerfile = args.dockerfile if os.path.isfile(args.dockerfile) else None
    setup_sh = args.setup_sh if os.path.isfile(args.setup_sh) else None
    flags = binary_flags(args.coordinator, args.worker, args.cli)
    cases = validate_all(args.dir, dockerfile, setup_sh, flags, args.cli, args.kubernetes_version)
    if args.self_test:
        if dockerfile is None:
            fail_setup("--self_test needs the Dockerfile (%s)" % args.dockerfile)
        import validate_k8s_selftest  # beside this script; imports this module
        cases += validate_k8s_selftest.self_test(args.dir, dockerfile, setup_sh, flags, args.cli,
                                                 args.kubernetes_version)

    for case in cases:
        status = "FAIL" if case.errors else ("SKIP" if case.skipped else "ok  ")
        print("%s %s" % (status, case.name) + (" (%s)" % case.skipped if case.skipped and not case.errors else ""))
        for error in case.errors:
            print("     " + error.replace("\n", "\n     "))
    failed = sum(1 for c in cases if c.errors)
    skipped = sum(1 for c in cases if c.skipped and not c.errors)
    print("validate_k8s: %d passed, %d failed, %d skipped" % (len(cases) - failed - skipped, failed, skipped))
    if args.junit:
        write_junit(cases, args.junit)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

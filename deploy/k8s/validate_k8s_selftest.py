"""Self-test of validate_k8s.py: copies of the manifests and the Dockerfile, each broken in one way,
must be reported naming the file and the field (so //deploy/k8s:manifests_test provably fails on
a bad manifest). Run through `validate_k8s.py --self_test`."""

import os
import shutil
import tempfile

from validate_k8s import Case, validate_all

MUTATIONS = [
    # (description, file, old text, new text, words the report must contain)
    ("a misspelled field in the Deployment", "coordinator.yaml",
     "          readinessProbe:", "          readinesProbe:", ["coordinator.yaml", "readinesProbe"]),
    ("a wrong type in the Deployment", "coordinator.yaml",
     "  replicas: 1\n", "  replicas: one\n", ["coordinator.yaml", "spec.replicas"]),
    ("a wrong type in a probe", "coordinator.yaml",
     "            periodSeconds: 20", "            periodSeconds: twenty", ["coordinator.yaml", "periodSeconds"]),
    ("a misspelled MPIJob spec field", "mpijob-workers.yaml",
     "  slotsPerWorker: 1", "  slotPerWorker: 1", ["mpijob-workers.yaml", "slotPerWorker"]),
    ("a wrong type in an MPIJob pod template", "mpijob-workers.yaml",
     "                  containerPort: 2222", "                  containerPort: [2222]",
     ["mpijob-workers.yaml", "spec.mpiReplicaSpecs.Worker.template.spec.containers.0.ports.0.containerPort"]),
    ("a misspelled field in an MPIJob pod template", "mpijob-workers.yaml",
     "          tolerations:", "          toleration:", ["mpijob-workers.yaml", "toleration"]),
    ("an MPIJob with two launchers", "mpijob-workers.yaml",
     "    Launcher:\n      replicas: 1", "    Launcher:\n      replicas: 2",
     ["mpijob-workers.yaml", "spec.mpiReplicaSpecs.Launcher.replicas", "must be 1"]),
    ("an unsupported MPIJob enum value", "mpijob-workers.yaml",
     "  mpiImplementation: OpenMPI", "  mpiImplementation: MVAPICH", ["mpijob-workers.yaml", "mpiImplementation"]),
    ("mpirun -np that does not match the workers", "mpijob-workers.yaml",
     '                - -np\n                - "2"', '                - -np\n                - "3"',
     ["mpijob-workers.yaml", "-np 3"]),
    ("a flag the worker does not have", "mpijob-workers.yaml",
     "                - --tls_ca=/etc/sigmatune/tls/ca.crt", "                - --tls-ca-file=/etc/sigmatune/tls/ca.crt",
     ["mpijob-workers.yaml", "--tls-ca-file"]),
    ("a flag the coordinator does not have", "coordinator.yaml",
     "            - --listen=0.0.0.0:50051", "            - --health_port=50052\n            - --listen=0.0.0.0:50051",
     ["coordinator.yaml", "--health_port"]),
    ("a wrong type in the Service", "service.yaml",
     "      port: 50051", "      port: grpc-port", ["service.yaml", "spec.ports.0.port"]),
    ("a PVC with an unknown access mode field", "pvc.yaml",
     '  accessModes: ["ReadWriteMany"]', '  accesModes: ["ReadWriteMany"]', ["pvc.yaml", "accesModes"]),
    ("a claim that no resource defines", "coordinator.yaml",
     "            claimName: sigmatune-db", "            claimName: sigmatune-database", ["coordinator.yaml", "sigmatune-database"]),
    ("a secret key that secret.example.yaml does not show", "mpijob-workers.yaml",
     "                      key: worker-token", "                      key: token", ["mpijob-workers.yaml", "'token'"]),
    ("a duplicate key", "service.yaml",
     "  type: ClusterIP\n", "  type: ClusterIP\n  type: NodePort\n", ["service.yaml", "duplicate key"]),
    ("a namespace in a manifest", "service.yaml",
     "  name: sigmatune-coordinator\n", "  name: sigmatune-coordinator\n  namespace: default\n",
     ["service.yaml", "metadata.namespace"]),
    ("a kustomization resource that does not exist", "kustomization.yaml",
     "  - service.yaml\n", "  - service.yaml\n  - services.yaml\n", ["kustomization.yaml", "services.yaml"]),
    ("a manifest missing from the kustomization", "kustomization.yaml",
     "  - pvc.yaml\n", "", ["kustomization.yaml", "pvc.yaml", "not listed"]),
    ("the secret example listed as a resource", "kustomization.yaml",
     "  - pvc.yaml\n", "  - pvc.yaml\n  - secret.example.yaml\n", ["kustomization.yaml", "secret.example.yaml"]),
    ("a misspelled field in the secret example", "secret.example.yaml",
     "stringData:\n  tls.crt", "stringdata:\n  tls.crt", ["secret.example.yaml", "stringdata"]),
    ("a misspelled job spec field", "example-job.yaml",
     "micro_batch_size: 4", "micro_batchsize: 4", ["example-job.yaml", "micro_batchsize"]),
    ("a wrong type in the job spec", "example-job.yaml",
     "max_steps: 30", "max_steps: thirty", ["example-job.yaml", "max_steps"]),
    ("an absolute path in the job spec", "example-job.yaml",
     "base_model: models/", "base_model: /models/", ["example-job.yaml", "base_model"]),
    ("a Dockerfile builder without a package of tools/setup.sh", "Dockerfile",
     "      libgtest-dev libgmock-dev libbenchmark-dev \\\n", "      libgtest-dev libgmock-dev \\\n",
     ["Dockerfile", "libbenchmark-dev"]),
    ("a Dockerfile CMD flag the coordinator does not have", "Dockerfile",
     '"--db=/var/lib/sigmatune/jobs.db"', '"--database=/var/lib/sigmatune/jobs.db"', ["Dockerfile", "--database"]),
    ("a Dockerfile running as root", "Dockerfile",
     "USER 1000:1000", "USER root", ["Dockerfile", "USER 1000"]),
]


def self_test(k8s_dir, dockerfile, setup_sh, flags, cli, version):
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        pristine = os.path.join(tmp, "pristine")
        shutil.copytree(k8s_dir, pristine)
        docker_copy = os.path.join(tmp, "Dockerfile")
        shutil.copy(dockerfile, docker_copy)
        case = Case("self-test: an unchanged copy passes")
        for result in validate_all(pristine, docker_copy, setup_sh, flags, cli, version, kubectl=False):
            case.errors += result.errors
        cases.append(case.done())
        for index, (description, filename, old, new, expected) in enumerate(MUTATIONS):
            case = Case("self-test: %s is reported (%s)" % (description, filename))
            if "tools/setup.sh" in description and not setup_sh:
                case.skipped = "tools/setup.sh was not found (give --setup_sh)"
                cases.append(case.done())
                continue
            work = os.path.join(tmp, "m%02d" % index)
            shutil.copytree(k8s_dir, work)
            work_docker = os.path.join(work, "Dockerfile.copy")
            shutil.copy(dockerfile, work_docker)
            target = work_docker if filename == "Dockerfile" else os.path.join(work, filename)
            with open(target) as f:
                text = f.read()
            if text.count(old) != 1:
                case.error("the self-test's text %r occurs %d times in %s (update MUTATIONS)"
                           % (old, text.count(old), filename))
                cases.append(case.done())
                continue
            with open(target, "w") as f:
                f.write(text.replace(old, new))
            errors = []
            for result in validate_all(work, work_docker, setup_sh, flags, cli, version, kubectl=False):
                errors += result.errors
            errors = [e.replace("Dockerfile.copy", "Dockerfile") for e in errors]
            matching = [e for e in errors if all(word in e.replace("deploy/docker/Dockerfile", "Dockerfile")
                                                 for word in expected)]
            if not matching:
                case.error("not reported as expected (wanted a message with %s); the validator said:\n  %s"
                           % (", ".join(repr(w) for w in expected), "\n  ".join(errors) or "(nothing)"))
            cases.append(case.done())
    return cases



# runwarden in entrypoint mode on Nomad (docker driver): the image's ENTRYPOINT is
# `runwarden serve --` and `args` is the model server's command. On a replacement verdict
# runwarden drains, stops the model server and exits 10-15; the restart block restarts the
# task in place, and when it keeps failing (a GPU fault: exit 13 again at start-up) the
# allocation fails and the reschedule block moves it to another node.
#
# Grace period: shutdown_delay 5 s (the service is deregistered while runwarden still serves)
# + drain RUNWARDEN_DRAIN_TIMEOUT_SECONDS=20 + app stop RUNWARDEN_APP_STOP_TIMEOUT_SECONDS=10
# + 5 s margin = 40 s. kill_timeout = "40s" counts from SIGTERM (after the shutdown delay),
# so it covers drain + stop with 10 s to spare. The Nomad client caps kill_timeout at its
# max_kill_timeout (default 30s): raise that to 40s or more in the client's configuration.
job "demo-model" {
  type = "service"

  group "model" {
    count = 1

    # Between the service's deregistration and SIGTERM (the group's services are here).
    shutdown_delay = "5s"

    network {
      port "http" {
        to = 8080
      }
      port "admin" {
        to = 8081
      }
    }

    restart {
      attempts = 3
      interval = "5m"
      delay    = "5s"
      mode     = "fail"
    }

    reschedule {
      delay          = "30s"
      delay_function = "exponential"
      max_delay      = "10m"
      unlimited      = true
    }

    service {
      name     = "demo-model"
      port     = "http"
      provider = "nomad"

      # Traffic only once the model passed a check, and not while draining.
      check {
        name     = "readyz"
        type     = "http"
        port     = "admin"
        path     = "/readyz"
        interval = "2s"
        timeout  = "1s"
      }
    }

    task "runwarden" {
      driver = "docker"
      # Its exit stops the group's other tasks (a log shipper, say), so they restart with it.
      leader = true

      kill_signal  = "SIGTERM"
      kill_timeout = "40s"

      config {
        image           = "runwarden:0.1.0"
        ports           = ["http", "admin"]
        args            = ["python", "-m", "runwarden.demo", "--port", "8000"]
        readonly_rootfs = true

        mount {
          type     = "tmpfs"
          target   = "/tmp"
          readonly = false
          tmpfs_options {
            size = 1073741824
          }
        }
      }

      env {
        RUNWARDEN_APP_URL                  = "http://127.0.0.1:8000"
        RUNWARDEN_ADMIN_HOST               = "0.0.0.0"
        RUNWARDEN_DRAIN_TIMEOUT_SECONDS    = "20"
        RUNWARDEN_APP_STOP_TIMEOUT_SECONDS = "10"
        RUNWARDEN_STARTUP_TIMEOUT_SECONDS  = "600"
        RUNWARDEN_GPU_REQUIRED             = "true"
        RUNWARDEN_LOG_FORMAT               = "json"
      }

      resources {
        cpu    = 1000
        memory = 2048

        # Needs the Nomad NVIDIA device plugin on the client; delete to run the demo on CPU.
        device "nvidia/gpu" {
          count = 1
        }
      }
    }
  }
}

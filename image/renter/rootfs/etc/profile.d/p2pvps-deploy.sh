# P2P VPS: at login, say if deployment packages need `sudo p2pvps-deploy start-all` (after the
# container restarted or was recreated). Silent when everything runs or nothing is installed.
if [ -x /usr/local/bin/p2pvps-deploy ] && [ -d /media/storage/.p2pvps-deploy ]; then
    /usr/local/bin/p2pvps-deploy check 2>/dev/null || true
fi

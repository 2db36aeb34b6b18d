"""A small labelled retrieval corpus for measuring Herd's RAG search quality.

What it is
    DOCUMENTS is the knowledge base of a fictional company, Larkspur Robotics (collaborative "Wren" arms,
    "Ferry" mobile robots, the "Conductor" fleet software and its API, HR and travel policies, incident
    post-mortems, support terms, a glossary and an office list). Several documents deliberately share
    vocabulary -- three arm manuals, two mobile-robot manuals, release notes for Conductor 2.1, 2.2 and 2.3,
    two error-code references, four post-mortems -- so that retrieval is not trivial.

    QUESTIONS pairs each question with the id of the ONE document that answers it. KINDS (parallel to
    QUESTIONS) says what the question is meant to exercise:
      "paraphrase"  shares few words with its document, so embedding (vector) search should do better;
      "identifier"  hinges on a part number, error code, version string or unusual name, so lexical
                    (BM25) search should do better;
      "plain"       an ordinary question sharing some words with its document.

How it was written
    All text is original, written by hand for these tests: the company, people, products, part numbers,
    codes, prices and addresses are invented (example.com-style domains; no real contact details). Nothing
    is taken from the web or from any dataset or benchmark. Every question was checked by reading: the
    fact it asks for appears in its labelled document and in no other; where near-duplicate documents
    exist (for example the three arm manuals), the question names a detail only one of them states.

How to use it
    Index DOCUMENTS (whole documents or chunks, keeping the doc id), run each question through a search
    backend, and score the rank of the labelled doc id among the results, e.g. recall@5 and MRR, overall
    and per kind:

        from tests.rag.corpus import DOCUMENTS, QUESTIONS, KINDS
        for (question, doc_id), kind in zip(QUESTIONS, KINDS):
            ranked_ids = search(question)          # doc ids, best first
            ...

    Each document's first line is its title. Documents are 150-450 words (checked at import).
"""

DOCUMENTS: dict[str, str] = {
    # ------------------------------------------------------------------ product manuals: Wren arms
    "wren-5-manual": """Wren 5 Collaborative Arm - Operator Manual

Product code LR-5105. The Wren 5 is the smallest arm in the Larkspur Robotics Wren family, a six-axis
collaborative robot intended for light pick-and-place, screwdriving, labelling and inspection cells.

Specifications
- Payload: 5 kg
- Reach: 850 mm
- Repeatability: +/-0.03 mm
- Arm weight: 21 kg
- Mounting: four M8 bolts on a 150 mm bolt circle
- Ingress protection: IP54
- Ambient temperature: 0 to 45 C

Controller
The Wren 5 is driven by the compact CB-2 controller (LR-7720), which runs on 100-240 V AC single phase and
draws roughly 180 W during a typical cycle. The arm cable is 6 m long. A 12 m extension cable (LR-7725) is
sold separately; with the extension fitted, maximum joint speed is reduced by 10 percent to compensate for
voltage drop.

Joint limits and speed
Every joint rotates +/-360 degrees except the elbow (joint 3), which stops at +/-165 degrees to protect the
internal cable loom. Tool speed is capped at 1.0 m/s in collaborative mode and 2.0 m/s when the cell is
fenced and the safety scanner reports no person inside.

Tool flange
The flange follows ISO 9409-1-50-4-M6 and carries an 8-pin M8 connector that supplies 24 V at up to 1.5 A
for end effectors.

First start
1. Remove the orange shipping brace (LR-5190) from joint 2. Applying power with the brace still fitted can
   burn out the joint 2 brake, because the brake tries to release against the locked joint.
2. Release the brakes from the teach pendant.
3. Run the built-in self-test, which takes about 90 seconds.

Maintenance
Inspect the joint seals every 2,000 operating hours. The Wren 5 has no user-serviceable gearbox parts; if
backlash at any joint exceeds 0.1 degrees, return the arm for service.
""",
    "wren-10-manual": """Wren 10 Collaborative Arm - Operator Manual

Product codes LR-1010 (standard) and LR-1012H (Hygienic). The Wren 10 is the mid-size member of the Wren
family, built for machine tending, packing and assembly where parts weigh more than the Wren 5 can carry.

Specifications
- Payload: 10 kg
- Reach: 1300 mm
- Repeatability: +/-0.05 mm
- Arm weight: 33 kg
- Mounting: four M10 bolts on a 200 mm bolt circle
- Ingress protection: IP54 (standard), IP67 (Hygienic)
- Ambient temperature: 0 to 50 C

Controller
The Wren 10 uses the CB-3 controller (LR-7730), supplied from 200-240 V AC single phase. Typical consumption
is 350 W, with peaks of 1.1 kW during fast moves at full payload. The arm cable is 6 m long and no extension
is approved for this model.

Hygienic variant
The LR-1012H has a stainless steel flange, smooth white housings without exposed screws, and joints filled
with NSF H1 food-grade grease. It tolerates low-pressure washdown with alkaline detergents up to pH 11.
High-pressure jets above 30 bar force water past the shaft seals and void the warranty on the seals.

Joint limits and speed
Joints rotate +/-360 degrees except the elbow, which is limited to +/-160 degrees. Tool speed is capped at
1.5 m/s in collaborative mode.

Tool flange
ISO 9409-1-63-4-M6 with an 8-pin connector providing 24 V at up to 2 A.

Maintenance
Replace the grease in joints 1 and 2 every 8,000 operating hours using the regrease kit LR-1088. The
procedure takes about two hours and needs the arm in the transport pose. Joints 3 to 6 are sealed for life
and need no regreasing.
""",
    "wren-16-manual": """Wren 16 Collaborative Arm - Operator Manual

Product code LR-1616. The Wren 16 is the heaviest Wren arm, designed for end-of-line palletising of cases,
bags and trays. It trades reach for payload: it is shorter than the Wren 10 but lifts 60 percent more.

Specifications
- Payload: 16 kg
- Reach: 1000 mm
- Repeatability: +/-0.05 mm
- Arm weight: 48 kg
- Mounting: six M12 bolts on a 230 mm bolt circle
- Ingress protection: IP54
- Ambient temperature: 0 to 40 C

Controller
The Wren 16 uses the same CB-3 controller as the Wren 10, but the controller must run firmware 5.4 or later
to recognise this arm.

Pedestal and stacking height
For palletising, mount the arm on the 700 mm pedestal (LR-1640). With the pedestal, the arm can build
stacks up to 1.8 m high on a standard 1200 x 800 mm pallet. Without it, stacks are limited to about 1.1 m.

Payload derating
Above 12 kg, the controller automatically limits tool speed to 0.8 m/s in collaborative mode and disables
the fast wrist rotation profile. Always enter the correct payload mass and centre of gravity in the tool
settings; an underestimate of more than 1 kg causes false collision stops.

Joint 2 counterbalance
Joint 2 contains a spring counterbalance that carries part of the arm's own weight. Never open the joint 2
cover: the spring is preloaded to roughly 2 kN and can cause serious injury if released. Counterbalance
service is performed only by Larkspur field engineers.

Brake test
Run the brake test from the pendant every six months, or after any collision stop at full payload. The test
holds each joint against gravity for 5 seconds and logs the measured drift.
""",
    # ------------------------------------------------------------------ grippers and accessories
    "gripper-vg2-manual": """VG-2 Vacuum Gripper - User Guide

Product code LR-3302. The VG-2 is an electric vacuum gripper with a built-in pump, so no compressed air
supply is needed. It fits the tool flange of every Wren arm with the supplied adapter plate and draws power
from the flange connector.

Key figures
- Maximum payload: 8 kg (on clean, sealed surfaces; see below)
- Vacuum: up to -80 kPa
- Channels: two, independently controlled (A and B)
- Noise: 62 dB(A) at 1 m
- Weight: 1.3 kg

Suction cups
Two cup sizes are supplied: 40 mm bellows cups (LR-3340) for uneven parts and bags, and 60 mm flat cups
(LR-3360) for flat cartons and sheet metal. Unused cup ports must be closed with blanking plugs, otherwise
the pump runs continuously and cannot reach full vacuum.

Porous materials
Corrugated cardboard, fabric and wood leak air. On such surfaces expect the usable payload to drop to between
30 and 50 percent of the rated figure. Enable the "high flow" setting, which runs the pump at full speed at
the cost of higher noise and heat.

Grip detection
The gripper reports "part held" when vacuum passes the threshold set in the pendant plug-in, default
-45 kPa. If vacuum falls below the threshold during a move, the gripper signals "grip lost" and the program
can stop or retry.

Maintenance
Replace the inline filter (LR-3391) every 500 operating hours, or sooner in dusty environments; a clogged
filter shows as slow vacuum build-up. Inspect the cups weekly for cracks and replace any that are split.
""",
    "gripper-fg3-manual": """FG-3 Electric Finger Gripper - User Guide

Product code LR-3410. The FG-3 is a two-finger parallel gripper driven by a brushless motor and lead screw.
It is aimed at machine tending and assembly tasks where parts have defined gripping faces.

Key figures
- Stroke: 0 to 85 mm (total, both fingers)
- Grip force: adjustable from 20 to 140 N
- Recommended payload: up to 5 kg with friction fingertips
- Repeatability: +/-0.02 mm
- Weight: 1.1 kg

Fingertips
The gripper ships with aluminium blank fingertips that customers can machine to the part shape. Silicone
friction pads (LR-3421) are available for delicate or slippery parts; they reduce the usable stroke by 6 mm.

Force and speed
Grip force and closing speed are set independently. At forces above 100 N, closing speed is limited to
50 mm/s so that the fingers do not strike the part too hard. For fragile items such as glass vials, start at
20 N and increase in 10 N steps.

Loss of power
The lead screw is self-locking, so a gripped part stays held mechanically if power is lost or an emergency
stop is triggered. To release a part manually, turn the hex socket on the underside of the housing
anticlockwise with a 4 mm key.

Width detection
After closing, the gripper reports the measured finger width. Use this value in the program to detect a
missing part (fingers close completely) or a wrong part (width outside tolerance).

Maintenance
Clean the finger guides monthly and apply a thin film of the supplied lubricant. The lead screw requires no
maintenance for the first 2 million cycles.
""",
    # ------------------------------------------------------------------ product manuals: Ferry mobile robots
    "ferry-300-manual": """Ferry 300 Autonomous Mobile Robot - Operator Manual

Product code LR-4300. The Ferry 300 is a compact autonomous mobile robot (AMR) for moving totes, bins and
small carts between workstations. It navigates with two lidars and a ceiling-facing camera.

Specifications
- Payload: 300 kg
- Top speed: 1.5 m/s (1.0 m/s in shared aisles by default)
- Dimensions: 900 x 600 x 280 mm
- Battery: 48 V lithium iron phosphate, 40 Ah
- Runtime: about 9 hours at typical duty
- Charging: 0 to 80 percent in 55 minutes on the CD-40 dock
- Minimum aisle width: 1.1 m for two-way traffic, 0.8 m one-way

Floors
The Ferry 300 handles ramps up to 3 percent gradient when loaded and 5 percent when empty. Floor gaps such as
lift thresholds must not exceed 15 mm wide or 10 mm high. Avoid polished floors with standing water; wheel
slip degrades localisation.

Top modules
Three top modules are offered: a flat deck, a roller conveyor top (LR-4351) for automatic tote transfer, and
a lift top (LR-4355) that raises 60 mm to pick up carts from underneath. Only one top can be fitted at a
time, and changing tops takes about 20 minutes with standard tools.

Maps and missions
The robot is mapped by driving it manually with the Conductor app in mapping mode. A 5,000 square metre
floor takes about 40 minutes to map. Missions are created in Conductor, not on the robot.

Daily checks
Before each shift, check the bumper for damage, wipe both lidar windows with a dry microfibre cloth, and
confirm that the emergency stop buttons on both sides latch correctly.
""",
    "ferry-800-manual": """Ferry 800 Autonomous Mobile Robot - Operator Manual

Product code LR-4800. The Ferry 800 is the heavy-duty AMR in the Ferry range, designed to carry pallets and
tow trains of carts in warehouses and production halls.

Specifications
- Payload: 800 kg on deck, or 1,500 kg towed
- Top speed: 1.2 m/s (0.8 m/s when towing)
- Dimensions: 1350 x 850 x 320 mm
- Battery: 48 V lithium iron phosphate, 105 Ah
- Runtime: about 7 hours at typical duty
- Charging: 0 to 80 percent in 75 minutes on the CD-40 dock
- Minimum aisle width: 1.6 m for two-way traffic

Floors
The Ferry 800 climbs ramps up to 2 percent when loaded. It must not be used on mezzanine floors rated below
7.5 kN per square metre.

Towing
The tow hitch (LR-4870) is an automatic pin that engages cart loops from behind. Carts must have swivel
castors at the front and fixed castors at the rear. A tow train may contain up to three carts with a
combined length under 6 m. When towing, the robot widens its safety fields automatically, so plan turning
circles of at least 3.5 m diameter.

Pallet handling
With the pallet deck (LR-4860) the robot drives under a raised pallet stand and lifts it by 80 mm. It cannot
lift pallets from the floor; use fixed pallet stands at every pick-up and drop-off point.

Sound and light
The robot plays a two-tone chime when reversing and shows a blue projected spot on the floor 2 m ahead of
its direction of travel. The chime volume can be lowered to 55 dB but not switched off.
""",
    "charging-dock-manual": """CD-40 Charging Dock - Installation and Use

Product code LR-8840. The CD-40 is the automatic charging dock for both Ferry models. A robot drives onto the
dock, lowers its charging contacts and begins charging without any operator action.

Electrical
Each dock needs a dedicated 230 V, 16 A circuit with a residual current device. Output is 48 V DC at up to
40 A. Do not share the circuit with other equipment; voltage sags during charging start-up can trip other
loads.

Placement
- Anchor the dock to the floor with the four supplied M10 concrete anchors.
- Leave 1 m of clear space in front of the dock and 0.3 m on each side.
- Place the dock against a wall or barrier so robots cannot drive through it from behind.
- The dock must be within Wi-Fi coverage; it reports its status to Conductor.
A robot can dock if it arrives within +/-2 cm sideways and +/-3 degrees of heading. The robot corrects small
offsets itself.

Status light
- Solid blue: dock ready, no robot
- Pulsing green: charging
- Solid green: robot fully charged and still docked
- Flashing red: contact fault or over-temperature
- Flashing amber: dock offline from Conductor

Cleaning
Wipe the copper contact plates weekly with isopropyl alcohol and a lint-free cloth. Dark deposits on the
plates increase contact resistance and slow charging. Replace the contact plates (LR-8851) when the copper
coating wears through.

Sizing a fleet
As a rule of thumb, plan one dock for every three robots on a two-shift operation, and one dock for every
two robots on a three-shift operation.
""",
    # ------------------------------------------------------------------ error code references
    "arm-error-codes": """Wren Controller Error Codes

This reference lists fault codes raised by the CB-2 and CB-3 controllers used with Wren arms. Codes appear
on the teach pendant and in the controller log. Codes starting with E-1 are hardware faults, E-2 codes are
motion and safety stops, and E-3 codes are configuration faults.

E-101 Emergency stop active. An emergency stop button in the cell is pressed. Release the button, then
acknowledge on the pendant.

E-114 Brake release failed. One or more joint brakes did not open within 500 ms. Check that the arm is not
mechanically blocked, then retry. If it repeats on the same joint, the brake coil may be damaged.

E-142 Joint over-temperature. A joint motor exceeded 85 C. Let the arm cool for at least 20 minutes and
reduce cycle speed or payload.

E-219 Protective stop: collision detected. The measured joint torque exceeded the model by more than the
configured threshold, usually because the arm touched something. Clear the obstruction and press Resume.
Frequent false triggers usually mean the payload setting is wrong.

E-231 Tool flange over-current. The end effector drew more current than the flange supply allows. Check the
tool cable for shorts and compare the tool's rated current with the flange specification.

E-260 Encoder mismatch. The motor-side and output-side encoders of a joint disagree by more than 0.5
degrees. Do not continue operating; contact support, as this may indicate a slipping gearbox.

E-305 Safety configuration checksum mismatch. The safety configuration loaded in the controller differs from
the one approved in the pendant. Re-enter and confirm the safety password to approve the current
configuration.

E-317 Unsupported arm model. The controller firmware does not recognise the connected arm. Update the
controller firmware.
""",
    "ferry-error-codes": """Ferry Fault Codes

Ferry robots report faults with codes beginning with F. Faults appear on the robot's status screen, in the
Conductor fleet view and in robot.fault webhook events. Severity is either warning (the robot continues) or
blocking (the robot stops and waits).

F-12 Localisation lost (blocking). The robot cannot match its lidar scans to the map, typically after the
layout changed or the robot was pushed by hand. Drive it manually to a known area and select Relocalise. If
it recurs in the same place, update the map.

F-27 Bumper pressed (blocking). The front or rear bumper made contact. Check for obstacles and damage, then
clear the fault from the screen.

F-33 Battery cell imbalance (warning). Cell voltages differ by more than 80 mV. The robot finishes its
mission and then goes to a dock for a balancing charge, which takes up to 4 hours.

F-48 Wheel motor stall (blocking). A drive wheel could not turn, usually because of debris such as shrink
wrap wound around the axle. Switch off the robot before cleaning the wheel.

F-51 Lidar window dirty (warning). Scan quality dropped below the limit. Clean the window; the robot slows
to 0.5 m/s until the warning clears.

F-60 Path blocked (warning, becomes blocking after 120 seconds). The robot cannot find a route around an
obstacle. After two minutes it cancels the current stop and asks Conductor for a new mission.

F-72 Dock not found (blocking). The robot reached the dock position but could not detect the dock's
reflector. Check that the dock has not been moved and that the reflector is clean.
""",
    # ------------------------------------------------------------------ pendant, safety, calibration
    "teach-pendant-guide": """TP-7 Teach Pendant - Quick Guide

Product code LR-7790. The TP-7 is the handheld programming and operating terminal for all Wren arms. It has a
10.1 inch touchscreen, an emergency stop button and a three-position enabling switch on the back.

Enabling switch
The enabling switch must be held in the middle position to move the arm in manual mode. Releasing it or
squeezing it fully stops motion immediately. Do not tape or clamp the switch; doing so defeats a safety
function and is a dismissible offence under the site safety rules.

Freedrive
Press and hold the freedrive button on the back of the pendant to move the arm by hand. In freedrive the arm
compensates for its own weight and the configured payload, so the payload setting must be correct or the
arm will drift up or down.

User levels
- Operator: start, stop and select existing programs
- Programmer: create and edit programs and waypoints
- Admin: change safety settings, network and users
The Admin PIN is 0000 on delivery and must be changed at first login. The screen locks after 10 minutes
without input.

Programs
Programs are stored as .wrp files on the controller. Up to 200 programs fit in controller memory. To back up
or copy programs, insert a USB stick formatted as FAT32 into the pendant's side port; exFAT and NTFS sticks
are not recognised.

Cleaning and care
Clean the screen with a damp cloth only. The pendant cable is 5 m long; if it is damaged, replace the whole
cable assembly rather than repairing it, because the emergency stop circuit runs through it.
""",
    "safety-scanner-manual": """SZ-270 Safety Laser Scanner - Configuration Guide

Product code LR-6270. The SZ-270 is a certified safety laser scanner (PL d, SIL 2) used to guard Wren arm
cells. When a person enters the monitored area the scanner tells the controller to slow down or stop the
arm, allowing the cell to run without a fence.

Fields
- Protective field: up to 5.5 m radius. An intrusion triggers a protective stop.
- Warning field: up to 20 m radius. An intrusion reduces the arm to collaborative speed.
- Scanning angle: 270 degrees
- Response time: 62 ms
Up to 16 field sets can be stored and switched by the controller, for example to use a smaller field while
the arm works on the far side of the cell.

Configuration
Fields are drawn in Conductor Safety Studio and transferred to the scanner over Ethernet. Every change
requires the safety password and produces a signed report that must be filed with the cell's risk
assessment.

Minimum distance
The protective field must be large enough that a person walking at 1.6 m/s cannot reach the hazard before
the arm stops. Calculate it as S = 1600 x T + 850, where T is the total stopping time in seconds (scanner
response plus arm stopping time) and S is in millimetres. Safety Studio performs this calculation
automatically when the arm's stopping time is known.

Mounting
Mount the scanner 150 to 300 mm above the floor so that it detects legs but is not triggered by small
debris. Do not mount it where it can be struck by forklift forks; use the protective bracket (LR-6281) in
traffic areas.

Cleaning
Dust on the optics cover reduces range and can cause nuisance stops. Clean the cover with the supplied
anti-static cleaner.
""",
    "calibration-procedure": """Tool and Camera Calibration Procedure

Document QP-031, owner: Applications Engineering. This procedure applies to Wren arm cells that use a tool
offset (TCP) or the Larkspur Eye wrist camera.

When to calibrate
- At commissioning
- After any collision or crash, even if no damage is visible
- After changing or re-mounting an end effector
- Every three months as routine
Record each calibration in the cell logbook with the date, operator and residual error.

Tool centre point (four-point method)
1. Fix a sharp reference pin firmly in the work area.
2. Jog the tool tip to touch the pin from four clearly different orientations, at least 30 degrees apart.
3. Save each pose in the TCP wizard.
4. The wizard computes the TCP offset and a residual error. Accept the result only if the residual is below
   0.2 mm; otherwise repeat with more varied orientations.

Camera calibration
Use the checkerboard target LR-9012, which has 9 x 12 squares of 25 mm. The target must be flat; a warped
target is the most common cause of poor results.
1. Open the Eye plug-in and select Hand-eye calibration.
2. Let the arm move through the 15 automatic poses, keeping the whole target visible.
3. Accept the result if the reprojection error is below 0.5 pixels.

Lighting
Calibrate under the lighting that will be used in production. Switch off flickering fluorescent tubes or set
the camera exposure to a multiple of 10 ms on 50 Hz mains.

Verification
After calibration, touch three reference points with the tool and check that the reported positions agree
within 0.5 mm.
""",
    # ------------------------------------------------------------------ Conductor release notes
    "conductor-2-1-release-notes": """Conductor 2.1 Release Notes

Version 2.1.0, released 14 March 2023. Conductor is the Larkspur fleet management software for Ferry robots
and Wren cells.

New features
- Zones and traffic rules: draw one-way aisles, speed-limited zones and no-go areas on the map. Robots obey
  zones without a firmware update.
- Multi-site dashboard: customers with more than one site can see all fleets on one screen.
- Mission templates: save a list of stops as a template and launch it with one click.
- Export of mission history to CSV.

Improvements
- Map loading is about three times faster on sites larger than 20,000 square metres.
- The robot list can be sorted by battery level.

Fixed issues
- CON-1184: the mission queue could stop accepting missions after 10,000 missions until the server was
  restarted.
- CON-1207: robots occasionally showed as offline for 30 seconds after a Wi-Fi roam.
- CON-1220: the CSV import of stops ignored the last line if it had no line break.

Deprecations
- The /v1/tasks API endpoint is deprecated and will be removed in a future release. Use /v2/missions
  instead.

Compatibility
Requires Ferry firmware 4.2 or later. Robots on older firmware connect but cannot use zones.

Upgrade notes
Back up the database before upgrading. The upgrade runs a data migration that takes roughly one minute per
100,000 stored missions.
""",
    "conductor-2-2-release-notes": """Conductor 2.2 Release Notes

Version 2.2.0, released 8 August 2023.

New features
- Webhooks: Conductor can now push events to your own HTTP endpoints instead of you polling the API.
- Battery-aware scheduling: missions are only assigned to robots with enough charge to finish them plus a
  15 percent reserve.
- Dark mode for the web interface.
- Spanish and Dutch translations.

Breaking changes
- The /v1/tasks endpoint has been removed. Integrations must use /v2/missions.
- The database now requires PostgreSQL 13 or newer. Sites on PostgreSQL 11 or 12 must upgrade the database
  before installing 2.2.

Fixed issues
- CON-1342: daily reports used UTC instead of the site timezone, so missions after midnight UTC appeared on
  the wrong day.
- CON-1355: the map editor lost unsaved changes when the browser tab was closed without warning.
- CON-1369: robots parked at docks were sometimes assigned missions while charging below 20 percent.

Known issues
- On Safari 16, the map may render blank after zooming; reloading the page restores it. Chrome, Edge and
  Firefox are unaffected.
- Webhook deliveries can be duplicated if the receiving server responds slowly (tracked as CON-1517).

Upgrade notes
Conductor 2.2 can be upgraded directly from 2.0 or 2.1. Upgrades from 1.x must go through 2.0 first. Read
the breaking changes above before upgrading sites with custom integrations.
""",
    "conductor-2-3-release-notes": """Conductor 2.3 Release Notes

Version 2.3.0, released 23 January 2024. Hotfix 2.3.1 released 6 February 2024.

New features
- Custom roles: administrators can define roles with fine-grained permissions, for example allowing shift
  leads to pause robots but not edit maps. The fixed Viewer, Operator and Admin roles remain available.
- ElevatorLink: Ferry robots can call and ride lifts through a relay interface box (LR-5520) that connects to
  the lift controller. Supported lift controllers are listed in the ElevatorLink guide.
- Higher API limits for enterprise plans.
- Audit log export to syslog.

Fixed issues
- CON-1517: duplicate webhook deliveries when the receiver responded slowly. Conductor now waits for the
  response timeout before retrying.
- CON-1533: zones with more than 64 corners could not be saved.
- CON-1560: the battery chart showed gaps when a robot changed site.

Removed
- Ubuntu 18.04 is no longer a supported host operating system. Move on-premise servers to Ubuntu 22.04 LTS
  before upgrading.

Hotfix 2.3.1
- Fixed a memory leak in the map tile server that made the web interface slow down after about five days of
  uptime. All sites on 2.3.0 should install 2.3.1.

Upgrade notes
Custom roles are created empty; existing users keep their previous fixed role after the upgrade.
""",
    # ------------------------------------------------------------------ Conductor API and installation
    "api-authentication": """Conductor API - Authentication

All requests to the Conductor REST API at https://api.larkspur.example/v2 must be authenticated. Two methods
are supported.

API keys
API keys suit scripts and server-to-server integrations owned by one customer. Create keys in Conductor under
Settings > API keys. Live keys start with lrk_live_ and test keys with lrk_test_; test keys work only against
the sandbox at https://sandbox.larkspur.example/v2 and never move real robots. Send the key in the header:

    Authorization: Bearer lrk_live_...

A key is shown only once, when it is created. Store it in a secret manager. Each key can be limited to
scopes such as robots:read, missions:write and maps:read.

OAuth 2.0 client credentials
Partners building integrations for several customers should use OAuth client credentials. Exchange the
client ID and secret for an access token:

    POST /oauth/token
    grant_type=client_credentials&scope=missions:write

The response contains access_token and expires_in. Tokens are valid for 3600 seconds; request a new one
shortly before expiry rather than waiting for a 401 error.

Key rotation
Keys do not expire automatically, but we recommend rotating them every 90 days. To rotate without downtime,
create a new key, deploy it, confirm traffic on the new key in the usage page, then revoke the old key.
Revoked keys stop working within 60 seconds.

Errors
- 401 invalid_token: the key or token is missing, malformed, revoked or expired.
- 403 insufficient_scope: the credential is valid but lacks the scope for this endpoint.
""",
    "api-missions": """Conductor API - Missions

A mission is an ordered list of stops that one robot completes. Missions are created by your system and
assigned to robots by Conductor.

Create a mission
    POST /v2/missions
Body fields:
- robot_group (string, required): the group of robots that may run the mission, e.g. "tuggers-hall-b".
- stops (array, required): between 1 and 25 stops, each with a location_id and an optional action ("load",
  "unload" or "wait_for_button").
- priority (integer, optional): 1 (lowest) to 5 (highest); default 3.
- deadline (ISO 8601 timestamp, optional): missions not started by the deadline are failed automatically.
Returns 201 Created with a mission_id such as msn_8FQ2K1. Requires the missions:write scope.

Get a mission
    GET /v2/missions/{mission_id}
Returns the mission with its status, assigned robot and per-stop timestamps.

Status values
queued, assigned, in_progress, completed, failed, cancelled.

Cancel a mission
    DELETE /v2/missions/{mission_id}
Missions can be cancelled only while queued or assigned. Once the robot has started driving, the call
returns 409 with the error code MISSION_LOCKED; send the robot to a safe stop from the Conductor interface
instead.

Idempotency
Send an Idempotency-Key header with a unique value when creating missions. If a request times out and you
retry with the same key within 24 hours, Conductor returns the original mission instead of creating a
duplicate.
""",
    "api-robots": """Conductor API - Robots

Read the state of robots and change their operating mode.

List robots
    GET /v2/robots
Query parameters:
- site (optional): site ID, e.g. site_rtm01
- status (optional): idle, busy, charging, fault, maintenance or offline
- limit (optional): page size, default 50, maximum 200
- cursor (optional): value of next_cursor from the previous page
Results are ordered by robot ID. When next_cursor is null, there are no more pages. Requires robots:read.

Robot object
- robot_id: e.g. rbt_F300_0042
- model: ferry-300, ferry-800, wren-5, wren-10 or wren-16
- battery_pct: state of charge, 0 to 100; null for Wren arms
- pose: x and y in metres and theta in radians, in the site map frame
- firmware: version string, e.g. "4.7.2"
- last_seen: timestamp of the last heartbeat; robots are reported offline after 45 seconds without a
  heartbeat

Set maintenance mode
    PATCH /v2/robots/{robot_id}
    {"maintenance": true, "reason": "wheel replacement"}
A robot in maintenance mode finishes its current mission and then receives no new missions until maintenance
is set back to false. The reason is shown to operators in the fleet view. Requires robots:write.

Pagination example
Request GET /v2/robots?limit=200, then repeat with cursor set to next_cursor until it is null. Do not rely on
offsets; robots added during paging could otherwise be skipped.
""",
    "api-webhooks": """Conductor API - Webhooks

Webhooks push events to an HTTPS endpoint you control. Register endpoints in Conductor under Settings >
Webhooks or with POST /v2/webhooks.

Events
- mission.completed: a mission finished all stops
- mission.failed: a mission failed or passed its deadline
- robot.fault: a robot raised a blocking fault
- battery.low: a robot fell below the configured battery threshold
- map.published: a new map version went live

Payload
Each delivery is a JSON POST with the fields id, type, created_at and data. The id is unique per event; use
it to discard duplicates.

Verifying signatures
Every request carries the header X-Larkspur-Signature, containing an HMAC-SHA256 of the raw request body
computed with your endpoint's signing secret and hex encoded, plus a timestamp header X-Larkspur-Timestamp.
Reject requests where the signature does not match or the timestamp is more than 5 minutes old, to prevent
replay attacks.

Responding and retries
Your endpoint must answer with a 2xx status within 10 seconds. Any other outcome counts as a failure. Failed
deliveries are retried with exponential backoff: after 1 minute, 5 minutes, 30 minutes, 2 hours and then
every 6 hours, up to 8 attempts in total. After 8 failures the event is dropped and the endpoint is marked
unhealthy; after three days unhealthy it is disabled and the account owner receives an email.

Ordering
Events are not guaranteed to arrive in order. Use created_at to order them.
""",
    "api-rate-limits": """Conductor API - Rate Limits

Rate limits protect the shared Conductor cloud from runaway integrations. Limits apply per API key or OAuth
client, not per user or IP address.

Limits by plan
- Standard: 600 requests per minute, bursts up to 100 requests per second
- Enterprise: 3,000 requests per minute, bursts up to 300 requests per second
- Sandbox: 120 requests per minute regardless of plan
Mission creation (POST /v2/missions) has a separate limit of 60 per minute on every plan, because each new
mission triggers route planning.

Response headers
Every response includes:
- X-RateLimit-Limit: the per-minute limit for this credential
- X-RateLimit-Remaining: requests left in the current window
- X-RateLimit-Reset: seconds until the window resets

Exceeding the limit
Requests over the limit receive 429 Too Many Requests with a Retry-After header in seconds. Clients must wait
at least that long. Clients that keep sending requests while limited for more than 5 minutes are blocked for
one hour.

Good practice
- Use webhooks instead of polling robot status in a loop.
- Cache map data; maps change rarely and each response can be several megabytes.
- Spread scheduled jobs across the minute instead of firing them all at :00.
If your integration needs a higher limit, contact your account manager with your expected request volume.
""",
    "conductor-installation": """Conductor On-Premise Installation Guide

Most customers use the Conductor cloud. Sites that cannot send robot data off-premise can run Conductor on
their own server.

Server requirements
- 8 vCPU, 32 GB RAM and a 500 GB SSD for fleets of up to 50 robots; add 4 vCPU and 8 GB RAM for every
  further 50 robots
- Ubuntu 22.04 LTS
- An external PostgreSQL database on a separate host, with daily backups
- A static IP address on the same network as the robots

Network
Robots connect to the server on TCP port 8883 (MQTT over TLS). The web interface and API use port 443. Wi-Fi
must give at least -67 dBm signal strength everywhere robots drive, with roaming between access points
completed in under 100 ms.

Installing
1. Download the installer from the customer portal with your licence key.
2. Run sudo ./conductor-install --site-id <your site id>.
3. The installer sets up the broker, map server and web interface as system services and generates TLS
   certificates with automatic renewal.
4. Open https://<server>/setup to create the first admin account.

Licensing
The licence file is tied to the server's hardware fingerprint. If you replace the server, ask support to
reissue the licence. An expired licence stops new missions but does not stop robots mid-mission.

Updates
On-premise sites receive updates as signed packages. Install them during a planned maintenance window;
robots must be parked before the update because they disconnect for 2 to 5 minutes.

Backups
Back up the PostgreSQL database and the /var/lib/conductor/maps folder. Restore both together; a map folder
from a different date than the database causes mission errors.
""",
    # ------------------------------------------------------------------ HR, finance and IT policies
    "travel-policy": """Business Travel Policy

Owner: Finance. Applies to all employees and contractors travelling on Larkspur business.

Booking
All flights, trains and hotels must be booked through TripDesk, our travel booking portal, at least 14 days
before departure where possible. Bookings made outside TripDesk are reimbursed only if they were cheaper than
the TripDesk fare on the same day, shown with a screenshot.

Class of travel
- Flights under 6 hours: economy class.
- Flights of 6 hours or more: premium economy. Business class requires written approval from a member of the
  executive team.
- Rail: standard class, or first class if the fare difference is less than GBP 30.

Hotels
Nightly caps, including taxes: London GBP 220, other UK cities GBP 150, Rotterdam EUR 190, Austin USD 240,
Pune INR 9,000. For other destinations use the cap suggested by TripDesk.

Meals and daily allowance
A daily allowance covers meals and incidentals: GBP 45 in the UK, EUR 55 in the Eurozone, USD 65 in the
United States and INR 2,500 in India. No receipts are needed for the allowance. Alcohol is never reimbursed
on individual travel.

Ground transport
Use public transport where practical. Taxis and ride-hailing are allowed late at night, with heavy
equipment, or when public transport would add more than an hour. Private car use is reimbursed at GBP 0.45
per mile.

Claims
Reimbursement claims must be lodged in Ledgerly no later than 21 calendar days after the final day of the
trip. Late claims need approval from the finance director.

Travel safety
Register every international trip in TripDesk so the company can contact you in an emergency. Travel to
countries rated high risk requires approval from the security team.
""",
    "expense-policy": """Expense and Purchasing Policy

Owner: Finance. This policy covers non-travel spending: client entertainment, software, equipment, training
and small purchases. Travel costs are covered by the Business Travel Policy.

Approval limits
- Up to GBP 250: line manager
- GBP 250 to GBP 2,000: department head
- GBP 2,000 to GBP 25,000: finance director
- Above GBP 25,000: chief financial officer, and three written quotes are required
Splitting a purchase into smaller orders to stay under a limit is a disciplinary matter.

Receipts
Itemised receipts are required for every expense above GBP 25. Photograph the receipt into Ledgerly on the
day; paper originals can be discarded once the photo is accepted.

Client entertainment
Entertainment of customers or partners is limited to GBP 80 per person, including drinks, and the names and
companies of all attendees must be recorded on the claim. Entertainment of public officials requires prior
approval from Legal.

Software
Software subscriptions must be requested through the IT portal, not bought on a personal card, so that
Security can review how the vendor handles our data. Free trials that require a card also go through IT.

Corporate cards
Employees who spend regularly can apply for a corporate card with a monthly limit of GBP 3,000. Cards must
not be used for personal spending, even if the amount is repaid.

Deadlines
Non-travel expenses must be submitted by the fifth working day of the month after the spending took place.
""",
    "annual-leave-policy": """Annual Leave and Sickness Policy

Owner: People team. Applies to employees in the UK and the Netherlands; Austin and Pune have local
supplements.

Entitlement
Full-time employees receive 27 days of annual leave per year plus public holidays. After five years of
service the entitlement rises to 30 days. Part-time entitlement is calculated pro rata. The leave year runs
from 1 January to 31 December.

Booking leave
Request leave in PeopleHub. Requests for more than three consecutive days should be made at least two weeks
in advance; managers respond within three working days. Leave during the last two weeks of December is
shared fairly across the team and may be limited in customer-facing roles.

Carrying over
Up to five unused days may be carried into the next leave year and must be used by 31 March. Days beyond
that are lost unless the employee could not take them because of sickness or parental leave.

Buying leave
Once per year, in November, employees may buy up to five extra days through salary sacrifice. Selling leave
is not possible.

Sickness
Tell your manager before 10:00 on the first day of absence. For absences of up to seven calendar days you can
self-certify in PeopleHub. From day eight a doctor's note is required. Full pay continues for up to 20
working days of sickness in any rolling 12 months; after that statutory rules apply.

Volunteering
Everyone has two paid volunteering days per year for registered charities.
""",
    "parental-leave-policy": """Parental Leave Policy

Owner: People team. This policy applies to all employees from their first day, regardless of length of
service.

Birth parent
The birth parent receives 26 weeks of leave at full pay, followed by up to 13 weeks at statutory pay, and may
take further unpaid leave up to 52 weeks in total.

Non-birth parent
Partners, including same-sex partners and parents through surrogacy, receive 12 weeks at full pay. This
leave can be taken in up to three blocks within the child's first year.

Adoption
Adoptive parents receive the same leave as birth parents (primary adopter) or non-birth parents (secondary
adopter), starting from the placement date.

Keeping in touch
Employees on leave may work up to 10 keeping-in-touch days, paid at their normal daily rate, without ending
their leave. These days are optional for both employee and manager.

Returning to work
For the first four weeks after returning, employees may work 80 percent of their contracted hours at full
pay. A return conversation with the manager is held in the first week back.

Pregnancy loss
Employees who experience pregnancy loss at any stage, and their partners, receive two weeks of paid leave
without needing to provide evidence.

Notice
Tell the People team your planned leave dates at least 15 weeks before the expected week of childbirth, or as
soon as possible after an adoption match.
""",
    "remote-work-policy": """Hybrid and Remote Work Policy

Owner: People team.

Office attendance
Larkspur is a hybrid company. Employees attached to an office are expected on site at least two days per
week; teams agree their anchor days, and Tuesday is the company-wide anchor day for all-hands meetings. Roles
in manufacturing, field service and labs are fully on site.

Core hours
Everyone should be available between 10:00 and 15:00 local time for meetings. Outside core hours, schedule
work flexibly around your team.

Working from abroad
Employees may work from another country for up to 30 days in any 12-month period, subject to manager
approval and a tax check by the People team at least three weeks before travel. Access to customer systems
from abroad may be restricted by contract. Working from countries under sanctions is never allowed.

Home office equipment
New employees receive a one-off home office allowance of GBP 400 for a desk, chair or monitor, and a monthly
internet contribution of GBP 30 paid through payroll. Equipment bought with the allowance remains the
employee's property.

Fully remote roles
Some roles are advertised as fully remote. Fully remote employees travel to their nearest office once per
quarter, with travel paid under the Business Travel Policy.

Security at home
Work only on company laptops, lock your screen when you step away, and do not let family members use work
devices. Video calls discussing customer information should not be held in public places.
""",
    "onboarding-checklist": """New Starter Onboarding Checklist

Owner: People team and IT. Managers use this checklist for every new employee.

Before day one
- The manager sends a welcome email with start time, office address and first-week agenda.
- IT prepares the laptop and creates accounts; requests must be raised at least 10 working days before the
  start date.
- A buddy from another team is assigned. The buddy meets the new starter in the first week and every two
  weeks during the first three months.

Day one
- Collect the laptop from the IT desk and set up multi-factor authentication.
- Photo for the building badge at reception.
- Tour of the office, fire exits and first aid points.
- Lunch with the team, paid by the company.

First week
- Complete the Safe Hands security training within five working days. Accounts with the training overdue are
  suspended until it is done.
- Complete the robot cell safety induction if you will enter the lab or factory floor.
- Read the handbook and sign the acceptable use policy.

First three months
- Agree a 30-60-90 day plan with your manager in week one.
- Meet at least five colleagues outside your team.
- Probation lasts six months. The manager holds a mid-probation review at three months and a final review
  before the six-month date.

Feedback
New starters complete a short onboarding survey at day 30. Results are reviewed monthly by the People team.
""",
    "performance-review-process": """Performance Review Process

Owner: People team.

Cycles
Reviews run twice a year. The spring cycle opens on 1 April and the autumn cycle on 1 October. Each cycle
lasts five weeks: two weeks for self-reviews and peer feedback, one week for manager reviews, one week for
calibration and one week for conversations.

Self-review
Employees answer four questions in PeopleHub: what they delivered, how they worked with others, what they
learned, and what they want to focus on next. Keep it to one page. Peer feedback is requested from three to
five colleagues chosen together with the manager.

Ratings
Managers choose one of five ratings: Not yet meeting, Partially meeting, Meeting, Exceeding and Outstanding.
Ratings are calibrated in a meeting of managers from the same department, chaired by the department head, to
keep standards consistent across teams.

Promotions
Promotion nominations are made only in the autumn cycle. The manager writes a case against the next level's
expectations in the career framework. A promotion panel of three senior staff from outside the employee's
reporting line reviews each case. Results are announced in December and take effect from 1 January.

Pay
Salary reviews happen once a year and use the autumn rating. Pay ranges for each level are published
internally.

Concerns
If you disagree with your rating, raise it with your manager first, then with your HR business partner
within 14 days of the conversation.
""",
    "information-security-policy": """Information Security Policy - Staff Summary

Owner: Security team. This summary covers the rules every employee must follow. The full policy is in the
handbook.

Passwords and sign-in
- Use Vaultkeep, the company password manager, for every work password.
- Passwords must be at least 14 characters long and unique to each system.
- Multi-factor authentication is mandatory for all accounts. Administrators and anyone with production access
  must use a hardware security key; phone-based codes are not accepted for them.

Devices
- Company laptops use full-disk encryption and automatic updates; do not disable either.
- USB storage devices are blocked on laptops by default. Request an exception through the IT portal if you
  need one for robot controller backups.
- Personal phones may access email and chat only through the managed work profile.

Lost or stolen devices
Report a lost or stolen laptop, phone or badge to security@larkspur.example or the IT phone line within one
hour of noticing. The device will be wiped remotely. Reporting quickly is never held against you.

Phishing
Use the Report Phish button in the mail client for suspicious email. Never enter your password on a page you
reached from an email link. Security runs simulated phishing exercises every quarter.

Data classification
- Public: marketing material, published docs
- Internal: most company information
- Confidential: customer data, site maps, source code
- Restricted: credentials, personal data of employees, security findings
Confidential and restricted data must not be pasted into external AI tools or personal storage.

Clean desk
Lock your screen when leaving your desk and keep printed confidential documents in locked storage.
""",
    "it-helpdesk": """IT Helpdesk - How to Get Help

Owner: IT Operations.

Contact
- Portal: https://help.larkspur.example (preferred for everything that is not urgent)
- Chat: the #it-help channel
- Phone: extension 4357 (HELP) from any office phone
The helpdesk is staffed 08:00 to 18:00 UK time, Monday to Friday. Out of hours, the phone line forwards to an
on-call engineer for P1 issues only.

Priorities
- P1: a whole office or a production system is down. Response within 15 minutes.
- P2: one person cannot work at all. Response within 2 hours.
- P3: something is broken but there is a workaround. Response within 1 working day.
- P4: requests and questions. Response within 3 working days.

Laptops
Standard laptops are replaced every three years; engineering workstations every four years. Loan laptops are
available from the IT desk in Leeds and Rotterdam for up to two weeks while yours is being repaired. Do not
take company laptops to third-party repair shops.

Software requests
Request software through the portal. Items in the approved catalogue install automatically within an hour;
anything else needs a security review, which takes about five working days.

Leavers
Managers must raise a leaver request at least five working days before the last day. Laptops and badges are
returned on the last day; accounts are disabled at 18:00 that day.

Printing
Printers use follow-me printing: send the job to "Larkspur-Print" and release it by tapping your badge on any
printer in any office.
""",
    # ------------------------------------------------------------------ incident post-mortems
    "postmortem-inc-2291": """Post-mortem INC-2291: Fleet Outage at Rotterdam Customer Site

Date of incident: 12 September 2023. Duration: 3 hours 40 minutes. Severity: SEV-1. Author: Marta
Oosterhuis, Site Reliability.

Summary
All 46 Ferry robots at a customer distribution centre near Rotterdam stopped accepting missions at 05:52
local time. Robots finished their current stop and then waited in place. Picking moved to manual carts until
service was restored at 09:32.

Root cause
The on-premise Conductor server talks to robots through a message broker secured with TLS. The broker's
certificate had been issued by hand two years earlier with a two-year validity and expired at 05:51. Robots
correctly refused the expired certificate and disconnected. The certificate was not covered by automatic
renewal because it had been created before the renewal tooling existed and was missing from the certificate
inventory.

Detection
The customer called support at 06:10. Monitoring showed the robots as offline but did not alert, because the
offline alert only fired when more than 50 percent of a fleet was offline for 30 minutes, and the robots
disconnected gradually as their sessions refreshed.

Resolution
The on-call engineer issued a new certificate at 08:55 and restarted the broker. Robots reconnected within
four minutes.

Action items
- Add every on-premise certificate to the inventory; alert 30 days before any expiry (owner: SRE, done).
- Move all on-premise brokers to automatic renewal (owner: Platform, due Q4 2023).
- Alert when any fleet loses more than 20 percent of its robots within 10 minutes (owner: SRE, done).
- Add a certificate expiry check to the Conductor health page.

What went well
The customer's fallback process with manual carts worked, and all robots stopped safely.
""",
    "postmortem-inc-2340": """Post-mortem INC-2340: Ferry Robots Disabled by Firmware 4.6.0 Update

Date of incident: 7 November 2023. Severity: SEV-1. Author: Dev Raghunathan, Robot Software.

Summary
The over-the-air rollout of Ferry firmware 4.6.0 left 37 robots at four customer sites unable to drive.
Their motor controller boards stayed in bootloader mode after the update. Field engineers restored all
robots within 52 hours, most of them remotely.

Root cause
Firmware 4.6.0 included a new motor controller image. Flashing the motor controller takes about six minutes,
during which the robot draws extra current to keep the drive electronics powered. On robots with less than
20 percent battery, the main computer's power saving mode cut power to the motor controller mid-flash,
leaving it without a valid image. Our test fleet always updated while docked, so the problem was never seen
before release.

Timeline
- 09:00 rollout started at 10 percent of eligible robots
- 10:40 first customer report of a robot that would not drive
- 11:05 rollout paused
- 13:30 cause identified
- Following two days: recovery through a remote bootloader command; 5 robots needed a board swap on site

Changes made
- The updater now installs only when the robot is docked and above 50 percent charge.
- Firmware 4.6.1 keeps the motor controller powered during any update.
- Staged rollouts now pause automatically if more than 1 percent of updated robots fail their post-update
  health check.
- The test fleet now includes robots with low batteries updating away from the dock.

Customer communication
Affected customers received daily updates and a service credit under their support contract.
""",
    "postmortem-inc-2417": """Post-mortem INC-2417: Wren 10 Ran at Full Speed in a Collaborative Cell

Date of incident: 19 February 2024. Severity: SEV-1 (safety). No one was injured. Author: Priya Kulkarni,
Applications Engineering, Pune.

Summary
During a service visit at a customer electronics plant in Pune, a Wren 10 arm moved at up to 2.3 m/s in a
cell configured for collaborative operation, where tool speed should have been limited. An operator was
standing about 1.5 m away, outside the arm's reach, and stopped the arm with the emergency stop.

Root cause
The technician had restored the controller from a backup taken before the cell was converted from fenced to
collaborative operation. The backup contained the old fenced speed limits. The restore tool copied the
safety configuration without asking anyone to approve it again, so the controller ran with a configuration
that nobody had approved for the current layout. The mismatch was logged as a warning but not shown on the
pendant.

Contributing factors
- The backup file names did not include a date, so the technician could not tell which backup was current.
- The customer had not yet removed the fence posts, so the old layout still looked plausible.

Corrective actions
- Controller firmware 5.6 blocks all motion after a restore until the safety configuration is approved with
  the safety password.
- Backup files are now named with the cell name and date.
- The service checklist now includes a speed check with a measuring tool after every restore.
- All field technicians completed a refresher on safety configuration by 31 March 2024.

Lessons
A restore is a configuration change and must be treated like one.
""",
    "postmortem-inc-2466": """Post-mortem INC-2466: Slow Conductor Cloud API

Date of incident: 14 May 2024. Duration: 2 hours 5 minutes. Severity: SEV-2. Author: Tomasz Wierzbicki,
Platform.

Summary
After a routine database migration, the Conductor cloud API slowed down sharply. The 99th percentile latency
for GET /v2/missions rose from 180 ms to over 9 seconds, and some integrations timed out and retried, which
increased the load further. Robots continued to run missions already assigned to them.

Root cause
The migration rebuilt the missions table to add a column for stop-level notes. The migration script
recreated the table but omitted the composite index on (site_id, created_at). Every mission lookup then
scanned the whole table, which held about 410 million rows.

Why tests missed it
The staging database contains only 2 million missions, where a full scan still finished in under 200 ms. Our
migration review checklist did not require comparing indexes before and after.

Resolution
The index was recreated concurrently, which took 74 minutes. Latency returned to normal at 12:47 UTC.

Action items
- Add an automated schema diff to the migration pipeline that fails if an index disappears (done).
- Grow the staging database to at least 20 percent of production volume (due Q3 2024).
- Publish guidance to integrators on retry backoff; several customers retried immediately in tight loops.
- Add a latency alert on p99 above 2 seconds for five minutes.

Customer impact
About 140 customers saw timeouts. No mission data was lost.
""",
    # ------------------------------------------------------------------ reference and customer-facing pages
    "glossary": """Larkspur Glossary

Common terms used in Larkspur documentation, support tickets and training.

AMR: Autonomous mobile robot. A robot that plans its own path using sensors and a map, unlike an AGV
(automated guided vehicle), which follows fixed lines, tape or floor markers.

Cobot: A collaborative robot designed to work near people without a fence, relying on force limits and speed
monitoring.

Dwell: Time a mobile robot waits at a stop, for example while a person loads it. Dwell is counted in mission
statistics separately from driving time.

Field set: A group of protective and warning fields stored in a safety scanner that is switched as a unit.

Hand-eye calibration: Finding the exact position of a camera relative to the robot flange.

Muting: Temporarily suppressing a safety sensor in a controlled way, for example while a pallet passes
through a light curtain. Muting must be designed into the risk assessment.

Protective stop: A controlled stop triggered by a safety function. The arm stays powered and can resume
after the cause is cleared, unlike an emergency stop, which removes power from the motors.

Reach: The maximum distance from the centre of the robot base to the tool flange.

Singularity: An arm pose where two or more joint axes line up, so that some tool motions would need
infinite joint speeds. Programs should avoid passing through singularities.

TCP: Tool centre point, the point on the end effector that programs move and at which speeds are measured.

Tugger: A mobile robot or vehicle that tows carts rather than carrying loads on its deck.

Yard: The area where idle mobile robots wait when they have no mission and do not need charging.
""",
    "office-locations": """Larkspur Offices

Leeds (headquarters)
Larkspur House, 14 Wharf Approach, Leeds, United Kingdom. Home of engineering, manufacturing and the
customer demo hall. Reception is open 08:00 to 18:00. There are 40 parking spaces, allocated daily through
the Deskly app; bicycle storage and showers are on the ground floor. Leeds station is a 12-minute walk.

Rotterdam
Floor 6, Maashaven Zuidzijde 210, Rotterdam, Netherlands. Sales, field service and the European support
centre. The office is next to Maashaven metro station; there is no car parking, but visitors can use the
public garage on Brielselaan. Reception is staffed 08:30 to 17:30.

Austin
Suite 300, East 6th Street, Austin, Texas, United States. North American sales, support and a small
applications lab with two demo cells. Parking is free in the building's garage; ask reception for a visitor
pass. Open 08:00 to 17:00 Central Time.

Pune
Third floor, Tower B, Hinjewadi Phase 2, Pune, India. Software engineering and applications engineering for
Asia. Company shuttle buses run from Wakad and Baner at 08:15 and return at 18:30. Reception is staffed
09:00 to 18:30.

Visitors
Visitors must be registered by their host in Deskly at least one day ahead and must carry a visitor badge at
all times. Visitors entering the demo hall or labs need safety shoes, which reception can lend.

Desk booking
All offices use hot desks booked through Deskly, except for lab benches, which are assigned by the lab
manager.
""",
    "support-sla": """Customer Support Plans and Response Times

Larkspur offers three support plans for customers running Wren arms, Ferry robots and Conductor.

Plans
- Standard: included for the first year with every product. Business-hours support in the customer's
  region, by portal and email only.
- Priority: adds phone support and extended hours, 07:00 to 22:00 on weekdays.
- Premier: 24/7 phone support for severity 1 issues, a named technical account manager and quarterly health
  reviews.

Severity levels
- Severity 1: production stopped, no workaround.
- Severity 2: production degraded, or a workaround is costly.
- Severity 3: minor issue, question or documentation error.

First response targets
- Severity 1: Standard 4 business hours, Priority 1 hour, Premier 30 minutes (any time)
- Severity 2: Standard 1 business day, Priority 4 hours, Premier 2 hours
- Severity 3: Standard 3 business days, Priority 1 business day, Premier 1 business day

On-site visits
If a problem cannot be solved remotely, Premier customers get an engineer on site within 24 hours in the UK,
the Netherlands, Germany and the US, and within 48 hours elsewhere. Priority customers are quoted a date based
on engineer availability.

Service credits
If Larkspur misses a Premier severity 1 response target, the customer receives a credit of 5 percent of the
monthly fee for each missed hour, capped at 50 percent.

Opening a case
Open cases at support.larkspur.example with the robot serial number, software versions and, for Conductor,
a diagnostic bundle downloaded from Settings > Diagnostics.
""",
    "warranty-policy": """Product Warranty

Larkspur warrants its hardware against defects in materials and workmanship from the date of delivery, for
the following periods:
- Wren arms and CB controllers: 24 months
- Ferry robots: 12 months
- Ferry batteries: 18 months or 1,500 full charge cycles, whichever comes first
- Grippers, scanners, docks and accessories: 12 months
Software is covered by the support plan, not by this warranty.

Exclusions
The warranty does not cover damage from collisions, incorrect installation, operation outside the specified
environment, unauthorised modification, or repairs by anyone other than Larkspur or a certified partner. Wear
parts such as suction cups, filters, fingertips, bumpers and wheel treads are not covered.

Battery capacity
A Ferry battery is considered defective if its capacity falls below 70 percent of the rated value within the
warranty period under normal use. The robot's battery health page shows the current capacity.

CareFlex extended warranty
CareFlex extends hardware cover by up to three additional years and adds advance replacement of failed
parts. It must be purchased within 90 days of delivery. CareFlex costs 8 percent of the hardware list price
per year for arms and 11 percent per year for mobile robots.

Making a claim
Contact support with the serial number and a description of the fault. If a part must come back to
Larkspur, support issues a return authorisation; see Returns and RMA. Warranty repairs do not extend the
original warranty period, but replaced parts carry their own 6-month warranty if that is longer than the
remaining cover.
""",
    "rma-returns": """Returns and RMA Procedure

Any hardware sent back to Larkspur, whether for warranty repair, paid repair or return of a loan unit, needs
a return merchandise authorisation (RMA).

Getting an RMA number
Support issues the RMA after troubleshooting confirms that the part must come back. RMA numbers have the form
RMA-2024-01873 (year and a five-digit sequence). Write the number clearly on the outside of the box. Parcels
without an RMA number are refused at goods-in and returned at the sender's cost.

Packing
- Wren arms must be returned in the transport pose with the shipping brace fitted, in the original crate or a
  replacement crate (LR-5901) ordered from support.
- Ferry robots are collected by our freight partner on a pallet; do not ship them by parcel service.
- Lithium batteries must be shipped as dangerous goods. Never send a damaged or swollen battery; support will
  arrange a special collection.
- Remove customer-specific tooling unless support asks for it.

Time limits
Items must reach Larkspur within 30 days of the RMA being issued, otherwise the RMA expires and a new one is
needed.

Advance replacement
Premier support and CareFlex customers receive a replacement part before returning the faulty one. The faulty
part must be returned within 14 days, otherwise the replacement is invoiced at list price.

Repair turnaround
Standard turnaround in the Leeds repair centre is 10 working days from receipt. Customers are sent a quote
first for non-warranty repairs; quotes not accepted within 30 days are closed and the item is returned
unrepaired.

Data on returned units
Controllers and robots may contain maps and programs. Export what you need before returning a unit; Larkspur
wipes storage during repair.
""",
    "spare-parts-catalogue": """Spare Parts Catalogue (extract)

Prices are list prices in GBP, excluding VAT, valid from 1 January 2024. Order through support.larkspur.example
or your distributor. Parts marked (S) are stocked in Leeds and Rotterdam and ship the next working day;
others have a lead time of 3 to 6 weeks.

Wren arms
- LR-2204 Joint cover kit, Wren 5, grey (S): GBP 64
- LR-2210 Joint cover kit, Wren 10, grey (S): GBP 82
- LR-2288 Emergency stop button, cell mount, with 10 m cable (S): GBP 115
- LR-2301 Brake module, joints 1-3, Wren 10/16: GBP 690
- LR-2330 Harmonic gearbox, size 25: GBP 2,450

Controllers and pendants
- LR-7741 Pendant cable assembly, 5 m (S): GBP 240
- LR-7760 CB-3 power supply unit: GBP 540
- LR-7768 CB-2 fan assembly (S): GBP 38

Ferry robots
- LR-4412 Drive wheel with polyurethane tread, Ferry 300 (S): GBP 310
- LR-4418 Drive wheel, Ferry 800: GBP 455
- LR-4430 Bumper strip, front (S): GBP 95
- LR-4471 Lidar window, replacement (S): GBP 72
- LR-4490 Battery pack 48 V 40 Ah, Ferry 300: GBP 3,900

Grippers
- LR-3388 Vacuum pump cartridge, VG-2: GBP 410
- LR-3425 Aluminium fingertip blanks, pair (S): GBP 29

Notes
Harmonic gearboxes and brake modules must be fitted by Larkspur field engineers or certified partners;
fitting them yourself voids the warranty. Battery packs ship as dangerous goods and take at least 5 working
days to deliver.
""",
    "on-call-rotation": """Engineering On-Call Rotation

Owner: Site Reliability. Applies to engineers in the Platform, Conductor and Robot Software teams.

Rotation
Each team runs a weekly rotation with a primary and a secondary engineer. Handover happens every Monday at
10:00 UK time in a 15-minute call, where the outgoing primary walks through open incidents and anything
unusual from the week.

Paging
Pages are sent by Klaxon, our alerting tool, to the Klaxon mobile app with SMS fallback. The primary must
acknowledge a page within 5 minutes. If it is not acknowledged, it escalates to the secondary after 10
minutes and to the engineering manager after 20 minutes.

Severity
- SEV-1: customer robots stopped or a safety risk. Open an incident channel, page the incident commander and
  update the status page every 30 minutes.
- SEV-2: degraded service with a workaround. Update the status page every hour.
- SEV-3: no customer impact; handle during working hours.

Compensation
On-call engineers receive an allowance of GBP 300 per week as primary and GBP 150 as secondary. Time spent
handling pages outside working hours can be taken as time off in lieu within the following month.

Expectations
Stay within 30 minutes of a laptop and a reliable connection. You may swap shifts with a colleague; record
the swap in Klaxon before it starts. Nobody is on call more than one week in four, and new engineers shadow
two rotations before joining.

After an incident
Every SEV-1 and SEV-2 needs a written post-mortem within five working days, using the blameless template.
Action items are tracked in the incident tracker and reviewed weekly.
""",
}

# Each question is answered by exactly one document; KINDS[i] is the kind of QUESTIONS[i] (see the module docstring).
QUESTIONS: list[tuple[str, str]] = [
    # wren-5-manual
    ("What is the LR-7725 cable and how does it affect joint speed?", "wren-5-manual"),
    ("Why does the transport bracket have to come off the smallest cobot before it is switched on?", "wren-5-manual"),
    # wren-10-manual
    ("Will blasting the meat-plant edition of the mid-range robot with a jet cleaner damage it?", "wren-10-manual"),
    ("How often does the grease in joints 1 and 2 of the Wren 10 need to be replaced?", "wren-10-manual"),
    # wren-16-manual
    ("Which controller firmware version does the LR-1616 arm need?", "wren-16-manual"),
    ("Why should I never open the joint 2 cover on the Wren 16?", "wren-16-manual"),
    # gripper-vg2-manual
    ("How much lifting capacity does the suction tool lose on materials that let air through?", "gripper-vg2-manual"),
    ("What is the default vacuum threshold for grip detection on the VG-2 gripper?", "gripper-vg2-manual"),
    # gripper-fg3-manual
    ("If the electricity cuts out, does the two-finger tool drop whatever it is holding?", "gripper-fg3-manual"),
    ("What is the maximum closing speed of the FG-3 gripper when the grip force is above 100 N?", "gripper-fg3-manual"),
    # ferry-300-manual
    ("What is the minimum aisle width for two-way traffic with the Ferry 300?", "ferry-300-manual"),
    ("What does the LR-4355 top module do?", "ferry-300-manual"),
    # ferry-800-manual
    ("How many trolleys can the big mobile robot pull at once?", "ferry-800-manual"),
    ("How long does the Ferry 800 take to charge to 80 percent?", "ferry-800-manual"),
    ("What is the LR-4870 hitch and how many carts can it take?", "ferry-800-manual"),
    # charging-dock-manual
    ("How many chargers do we need per robot if the fleet works around the clock?", "charging-dock-manual"),
    ("What does a flashing amber status light on the charging dock mean?", "charging-dock-manual"),
    # arm-error-codes
    ("What does error E-219 mean?", "arm-error-codes"),
    ("What should I do when the pendant shows E-260?", "arm-error-codes"),
    # ferry-error-codes
    ("What does fault F-33 mean?", "ferry-error-codes"),
    ("What happens when a Ferry robot's path is blocked for more than two minutes?", 'ferry-error-codes'),
    # teach-pendant-guide
    ("How must a thumb drive be set up so the hand-held teaching screen recognises it?", "teach-pendant-guide"),
    ("What is the default Admin PIN on the teach pendant?", "teach-pendant-guide"),
    # safety-scanner-manual
    ("How high off the ground should the area-guarding sensor be fixed?", "safety-scanner-manual"),
    ("What is the response time of the safety laser scanner?", "safety-scanner-manual"),
    ("What is the LR-6281 bracket for?", "safety-scanner-manual"),
    # calibration-procedure
    ("What size are the squares on the LR-9012 target?", "calibration-procedure"),
    ("What residual error is acceptable for a four-point TCP calibration?", "calibration-procedure"),
    # conductor-2-1-release-notes
    ("What problem was fixed by CON-1184?", "conductor-2-1-release-notes"),
    ("Since which release can we restrict vehicles to a single direction in certain corridors?",
     "conductor-2-1-release-notes"),
    ("What is the minimum Ferry firmware required by Conductor 2.1?", "conductor-2-1-release-notes"),
    # conductor-2-2-release-notes
    ("What was bug CON-1342?", "conductor-2-2-release-notes"),
    ("Since which version does the fleet software avoid giving a robot a job it lacks the charge to complete?",
     "conductor-2-2-release-notes"),
    ("Which browser has a known map rendering problem in Conductor 2.2?", "conductor-2-2-release-notes"),
    # conductor-2-3-release-notes
    ("What did hotfix 2.3.1 fix?", "conductor-2-3-release-notes"),
    ("From which release can warehouse vehicles take an elevator between storeys?", "conductor-2-3-release-notes"),
    ("Which Conductor release fixed duplicate webhook deliveries?", "conductor-2-3-release-notes"),
    ("What is the LR-5520 box used for?", "conductor-2-3-release-notes"),
    # api-authentication
    ("Where can a key starting with lrk_test_ be used?", "api-authentication"),
    ("For how long is a partner integration's short-lived credential valid?", 'api-authentication'),
    # api-missions
    ("When does the API return the MISSION_LOCKED error?", "api-missions"),
    ("Our job-submission call hung and we resent it - how do we make sure the work is not queued twice?",
     "api-missions"),
    ("How many stops can a single mission contain?", "api-missions"),
    # api-robots
    ("How do I stop the fleet manager from handing new jobs to a vehicle we are about to repair?", "api-robots"),
    ("What is the maximum page size when listing robots through the API?", "api-robots"),
    # api-webhooks
    ("What does the X-Larkspur-Signature header contain?", "api-webhooks"),
    ("How quickly must my webhook endpoint respond?", "api-webhooks"),
    # api-rate-limits
    ("How many requests per minute does the Standard plan allow?", "api-rate-limits"),
    ("What does the X-RateLimit-Reset header tell me?", "api-rate-limits"),
    ("What happens if our script keeps hammering the interface after being told to slow down?", "api-rate-limits"),
    # conductor-installation
    ("What is TCP port 8883 used for?", "conductor-installation"),
    # travel-policy
    ("Once I'm home from a work journey, by when must I ask to be paid back for what I spent?", 'travel-policy'),
    ("What is the nightly hotel cap in Austin?", "travel-policy"),
    # expense-policy
    ("Who has to sign off if I want to buy a £1,500 monitor setup?", "expense-policy"),
    ("What is the per-person limit for client entertainment?", "expense-policy"),
    # annual-leave-policy
    ("If I don't use all my holiday this year, how much of it can I keep for next year?", 'annual-leave-policy'),
    ("From which day of sickness is a doctor's note required?", 'annual-leave-policy'),
    # parental-leave-policy
    ("How much time off on full salary does a dad get when his baby is born?", "parental-leave-policy"),
    ("How many keeping-in-touch days can employees work during parental leave?", "parental-leave-policy"),
    # remote-work-policy
    ("How long per year am I allowed to do my job while staying overseas?", "remote-work-policy"),
    ("How much is the home office allowance for new employees?", "remote-work-policy"),
    # onboarding-checklist
    ("What happens to my logins if I don't finish the mandatory security course in my first week?",
     "onboarding-checklist"),
    ("How long is the probation period for new employees?", "onboarding-checklist"),
    # performance-review-process
    ("When in the year can my boss put me forward for a step up?", "performance-review-process"),
    ("Who reviews promotion cases?", "performance-review-process"),
    # information-security-policy
    ("I think my company computer was taken from my bag on the train - how fast must I flag it?",
     "information-security-policy"),
    ("What is Vaultkeep?", "information-security-policy"),
    # it-helpdesk
    ("My computer is in for repair; can I borrow one in the meantime?", "it-helpdesk"),
    ("How often are standard laptops replaced?", "it-helpdesk"),
    # postmortem-inc-2291
    ("Who wrote the post-mortem for INC-2291?", "postmortem-inc-2291"),
    ("Why did a Dutch client's vehicles all go idle early one autumn morning?", 'postmortem-inc-2291'),
    # postmortem-inc-2340
    ("What did Ferry firmware 4.6.1 change?", "postmortem-inc-2340"),
    ("What must be true before a vehicle now accepts a wireless software upgrade?", "postmortem-inc-2340"),
    # postmortem-inc-2417
    ("What does controller firmware 5.6 do after a backup is restored?", "postmortem-inc-2417"),
    ("How did an old saved copy of the settings make a cobot in India move faster than allowed?",
     "postmortem-inc-2417"),
    ("Which team does Priya Kulkarni work in?", "postmortem-inc-2417"),
    # postmortem-inc-2466
    ("How long did recreating the index take during INC-2466?", "postmortem-inc-2466"),
    ("What made the hosted platform crawl after engineers altered the database structure?", "postmortem-inc-2466"),
    # glossary
    ("What is the difference between an AMR and an AGV?", "glossary"),
    ("What's the name for the place spare vehicles sit in while they have no work?", 'glossary'),
    # office-locations
    ("What is Deskly used for?", "office-locations"),
    ("Is there transport laid on for employees getting to our Asian site?", "office-locations"),
    # support-sla
    ("If our whole line is down in the middle of the night, how fast will the top-tier plan get back to us?",
     "support-sla"),
    ("How quickly do Premier customers get an engineer on site in Germany?", "support-sla"),
    # warranty-policy
    ("How long after delivery can CareFlex be purchased?", "warranty-policy"),
    ("At what point is a mobile robot's power pack considered faulty under the guarantee?", 'warranty-policy'),
    ("How long is the warranty on Wren arms?", "warranty-policy"),
    # rma-returns
    ("We already received a substitute; how long until the broken unit must be sent to you?", "rma-returns"),
    ("What is LR-5901?", "rma-returns"),
    ("How long is the standard repair turnaround at the Leeds repair centre?", "rma-returns"),
    # spare-parts-catalogue
    ("What is part LR-7741 and how much does it cost?", "spare-parts-catalogue"),
    ("How much does LR-4412 cost?", "spare-parts-catalogue"),
    # on-call-rotation
    ("What is Klaxon?", "on-call-rotation"),
    ("How soon must a post-mortem be written after a SEV-1 incident?", "on-call-rotation"),
]

KINDS: list[str] = [
    "identifier", "paraphrase",  # wren-5-manual
    "paraphrase", "plain",  # wren-10-manual
    "identifier", "plain",  # wren-16-manual
    "paraphrase", "plain",  # gripper-vg2-manual
    "paraphrase", "plain",  # gripper-fg3-manual
    "plain", "identifier",  # ferry-300-manual
    "paraphrase", "plain", "identifier",  # ferry-800-manual
    "paraphrase", "plain",  # charging-dock-manual
    "identifier", "identifier",  # arm-error-codes
    "identifier", "plain",  # ferry-error-codes
    "paraphrase", "plain",  # teach-pendant-guide
    "paraphrase", "plain", "identifier",  # safety-scanner-manual
    "identifier", "plain",  # calibration-procedure
    "identifier", "paraphrase", "plain",  # conductor-2-1-release-notes
    "identifier", "paraphrase", "plain",  # conductor-2-2-release-notes
    "identifier", "paraphrase", "plain", "identifier",  # conductor-2-3-release-notes
    "identifier", "paraphrase",  # api-authentication
    "identifier", "paraphrase", "plain",  # api-missions
    "paraphrase", "plain",  # api-robots
    "identifier", "plain",  # api-webhooks
    "plain", "identifier", "paraphrase",  # api-rate-limits
    "identifier",  # conductor-installation
    "paraphrase", "plain",  # travel-policy
    "paraphrase", "plain",  # expense-policy
    "paraphrase", "plain",  # annual-leave-policy
    "paraphrase", "plain",  # parental-leave-policy
    "paraphrase", "plain",  # remote-work-policy
    "paraphrase", "plain",  # onboarding-checklist
    "paraphrase", "plain",  # performance-review-process
    "paraphrase", "identifier",  # information-security-policy
    "paraphrase", "plain",  # it-helpdesk
    "identifier", "paraphrase",  # postmortem-inc-2291
    "identifier", "paraphrase",  # postmortem-inc-2340
    "identifier", "paraphrase", "identifier",  # postmortem-inc-2417
    "identifier", "paraphrase",  # postmortem-inc-2466
    "plain", "paraphrase",  # glossary
    "identifier", "paraphrase",  # office-locations
    "paraphrase", "plain",  # support-sla
    "identifier", "paraphrase", "plain",  # warranty-policy
    "paraphrase", "identifier", "plain",  # rma-returns
    "identifier", "identifier",  # spare-parts-catalogue
    "identifier", "plain",  # on-call-rotation
]

# Self-check at import: sizes, alignment, labels and document lengths.
assert len(DOCUMENTS) >= 36, len(DOCUMENTS)
assert len(QUESTIONS) >= 50, len(QUESTIONS)
assert len(KINDS) == len(QUESTIONS), (len(KINDS), len(QUESTIONS))
assert set(KINDS) == {"paraphrase", "identifier", "plain"}, set(KINDS)
assert len({q for q, _ in QUESTIONS}) == len(QUESTIONS), "duplicate question"
for _question, _doc_id in QUESTIONS:
    assert _doc_id in DOCUMENTS, (_question, _doc_id)
for _doc_id, _text in DOCUMENTS.items():
    assert 150 <= len(_text.split()) <= 450, (_doc_id, len(_text.split()))
    assert _text.split("\n", 1)[0].strip(), f"{_doc_id}: first line must be a title"
del _question, _doc_id, _text
